"""From a trained network to label maps: the network on evaluation batches (`network`), the evaluation
protocol (`protocol`) and the post-processing steps that follow it (`crf`, ...)."""
