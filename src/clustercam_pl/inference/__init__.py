"""From a trained network to label maps: the network on evaluation batches (`network`), the protocol and
the one path through the post-processing steps (`protocol`), the steps themselves (`steps`: `crf`, ...)
and the worker pool that runs them (`pool`)."""
