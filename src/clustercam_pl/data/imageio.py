"""Reading images and index masks, writing index PNGs atomically.

Every failure names the file: a corrupt JPEG deep inside a DataLoader worker is otherwise a bare
``OSError: image file is truncated`` with no hint which of 100k files it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from clustercam_pl.utils.files import atomic_write

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Image file suffixes (compared case-insensitively) that folder datasets pick up: formats PIL decodes."""


DEFAULT_MAX_PIXELS = 200_000_000
"""Images whose header declares more pixels are refused by `read_image_reduced` (a decompression bomb: a tiny
file claiming 10^5 x 10^5 pixels would take 30 GB and more to decode); a genuine 100-megapixel photo passes."""

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a malformed file (DecompressionBombError is no OSError: without it a bomb ends the caller)."""


class ImageReadError(OSError):
    """An image or mask file is missing, unreadable or malformed. The message names the file."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the caller's ``max_pixels``."""


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class index), flattened to ``3 * n`` ints for PIL."""
    palette: list[int] = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def voc_colours(n: int = 256) -> np.ndarray:
    """`voc_palette` as an (n, 3) uint8 array, for drawing (row c: the colour of class index c)."""
    return np.array(voc_palette(n), dtype=np.uint8).reshape(n, 3)


def label_palette(background: bool = True) -> list[int]:
    """The PNG palette of label maps: VOC colours by label value; without a background class value c
    (class c) gets the VOC colour of value c + 1, so a class keeps its colour in both conventions and
    none is black. Entry 255 (void) is VOC's either way."""
    palette = voc_palette()
    if background:
        return palette
    return palette[3:-3] + palette[-6:-3] + palette[-3:]  # value v <- colour v + 1 (v < 254); 255 unchanged


_PALETTE = voc_palette()


def image_size(path: str | os.PathLike[str], *, full_decode: bool = False) -> tuple[int, int]:
    """(H, W) of an image from its header; ``full_decode`` also decodes all pixels (catches truncation)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"missing file: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if full_decode:
                im.load()
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e
    return h, w


TIFF_SUFFIXES = (".tif", ".tiff")
"""Files read with tifffile when an image has other than 3 channels (aerial tiles, multispectral patches)."""


def _tiff_layout(path: Path) -> tuple[tuple[int, int], int, np.dtype, bool]:
    """((H, W), bands, dtype, bands_first) of a TIFF's first series, from its header."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
    if len(shape) == 2:
        return (shape[0], shape[1]), 1, dtype, False
    if len(shape) == 3 and axes.endswith("YXS"):  # interleaved samples: (H, W, bands)
        return (shape[0], shape[1]), shape[2], dtype, False
    if len(shape) == 3 and axes.endswith("YX"):  # one plane per band (planar or one page each): (bands, H, W)
        return (shape[1], shape[2]), shape[0], dtype, True
    raise ImageReadError(f"cannot read image {path}: a TIFF of shape {shape} (axes {axes}); expected "
                         "(H, W, bands) or (bands, H, W)")


def tiff_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of a TIFF from its header (tifffile: any number of bands, which PIL does not open)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"missing file: {path}")
    try:
        return _tiff_layout(path)[0]
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error, ... for a malformed file
        raise ImageReadError(f"cannot read {path}: {e}") from e


def read_bands(path: str | os.PathLike[str], channels: int) -> np.ndarray:
    """Decode an image of exactly `channels` bands to uint8 (H, W, channels).

    TIFF (GeoTIFF too: the geo tags are ignored) is read with tifffile, interleaved (H, W, bands) or
    planar (bands, H, W); other formats with PIL (3 channels: `read_rgb`). A file with another band count
    or not 8 bits per band is refused naming the file, what it has and what was expected: a 4-band RGB-IR
    patch in a 3-band dataset (or the reverse) would otherwise train on the wrong bands.
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        if channels == 3:
            return read_rgb(path)
        raise ImageReadError(f"image {path}: only TIFF files are read with {channels} channels; write the "
                             f"patches as {channels}-band TIFF (tifffile.imwrite)")
    import tifffile

    try:
        (h, w), bands, dtype, first = _tiff_layout(path)
        if bands != channels:
            raise ImageReadError(f"image {path} has {bands} band(s), the dataset / network expects {channels}: "
                                 "pass the image of the right sensor, or prepare a dataset of this band count")
        if dtype != np.uint8:
            raise ImageReadError(f"image {path} has {dtype} bands, expected uint8 (8 bits per band): "
                                 "rescale it to 0..255 first")
        arr = tifffile.imread(path, series=0)  # (H, W, bands) or (bands, H, W)
    except FileNotFoundError as e:
        raise ImageReadError(f"missing image: {path}") from e
    except ImageReadError:
        raise
    except Exception as e:  # tifffile's errors for a malformed or truncated file
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    arr = arr.reshape(h, w, 1) if arr.ndim == 2 else np.moveaxis(arr, 0, -1) if first else arr
    return np.ascontiguousarray(arr)  # (H, W, channels) uint8


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB (grayscale and CMYK JPEGs are converted)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    except FileNotFoundError as e:
        raise ImageReadError(f"missing image: {path}") from e
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    return np.ascontiguousarray(arr)


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3): high bit depths scaled to 0..255 (never clipped), alpha dropped."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale (PNG, TIFF; "I" is how some Pillow versions and codecs open it): 0..65535 -> 0..255.
        # PIL's own convert("L") clips at 255 instead, which turns almost every pixel white.
        levels = np.asarray(im).astype(np.float64).clip(0, 65535) / 257.0  # (H, W)
        gray = np.rint(levels).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":  # float images have no fixed range: min-max scaled
        x = np.asarray(im, dtype=np.float64)  # (H, W)
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        gray = np.rint(np.nan_to_num((x - lo) / (hi - lo) if hi > lo else x * 0) * 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the palette's transparency entry, then dropped with the alpha below
    return np.asarray(im.convert("RGB"))  # L, LA, 1, P, RGBA (alpha dropped), CMYK, YCbCr, ...


@dataclass(frozen=True)
class DecodedImage:
    """An image as displayed, possibly decoded reduced, and the size of the full image."""

    rgb: np.ndarray  # (h, w, 3) uint8; h <= H, w <= W when decoded reduced
    size: tuple[int, int]  # (H, W) of the full image as displayed (EXIF orientation applied)


@contextmanager
def own_pixel_limit() -> Iterator[None]:
    """PIL's process-wide bomb check off while one file is opened: the caller's own limit (``max_pixels``,
    checked from the header before any pixel is decoded; or files it wrote itself) replaces it: PIL's
    fixed 89 MP warning / 179 MP error would refuse genuine large photos. Restored at once; image
    reading is single-threaded in each process."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _displayed_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) as a viewer shows the image: EXIF orientations 5-8 turn it by 90 degrees."""
    w, h = im.size
    turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # 0x0112: the EXIF orientation tag
    return (w, h) if turned else (h, w)


def _decode_reduced(im: Image.Image, size: tuple[int, int], need: tuple[int, int]) -> Image.Image:
    """Decode `im` shrunk by the largest integer factor that keeps it at least `need` (h, w) as displayed.

    JPEG: DCT scaling (``draft``, 1/2, 1/4 or 1/8) while decoding, so the full-size pixels never exist;
    then ``reduce`` for what remains. Other formats are decoded whole, then reduced before any conversion.
    """
    H, W = size
    factor = min(H // max(need[0], 1), W // max(need[1], 1))
    if factor < 2:
        im.load()
        return im
    w0, h0 = im.size  # as stored: turn `need` the same way
    stored_need = (w0 // factor, h0 // factor)
    if im.format == "JPEG":
        im.draft(None, stored_need)  # decodes at 1/s, s in (1, 2, 4, 8), still at least stored_need
    im.load()
    rest = min(im.size[0] // stored_need[0], im.size[1] // stored_need[1])
    if rest >= 2 and im.mode in ("L", "LA", "RGB", "RGBA", "RGBX"):  # not palette indices, not 16-bit
        im = im.reduce(rest)  # box average
    return im


def read_image_reduced(
    path: str | os.PathLike[str],
    need: Callable[[int, int], tuple[int, int]] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """`read_image_any`, decoded no larger than needed: ``need(H, W)`` is the (h, w) the caller will resize
    the image to (None: full size); the image is decoded shrunk by an integer factor down to at least that.

    Refuses (`ImageTooLargeError`, before decoding anything) an image whose header declares more than
    `max_pixels` pixels (None: no limit). Memory: a JPEG is decoded at the smallest of 1, 1/2, 1/4, 1/8
    of its side that keeps `need` (DCT scaling: its full-size pixels never exist), other formats once at
    full size (4 bytes a pixel) and reduced before any conversion.
    """
    path = Path(path)
    try:
        with own_pixel_limit(), Image.open(path) as im:
            W, H = im.size  # as stored; checked before the orientation: a PNG's EXIF may sit after its pixels
            if max_pixels is not None and H * W > max_pixels:
                raise ImageTooLargeError(
                    f"image {path}: its header declares {W} x {H} = {W * H:,} pixels, more than max_pixels="
                    f"{max_pixels} (a decompression bomb, or a huge scan); if the file is genuine, pass "
                    f"max_pixels={W * H} (decoding it whole needs at least {4 * W * H / 1e9:.1f} GB)"
                )
            H, W = _displayed_size(im)
            if need is None:
                im.load()  # decode everything here: a truncated file fails now, naming the file
                decoded = im
            else:
                decoded = _decode_reduced(im, (H, W), need(H, W))
            arr = _to_rgb8(ImageOps.exif_transpose(decoded))  # (h, w, 3)
    except FileNotFoundError as e:
        raise ImageReadError(f"missing image: {path}") from e
    except ImageReadError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    return DecodedImage(np.ascontiguousarray(arr), (H, W))


def read_image_any(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image file a user has to uint8 (H, W, 3) RGB, in the orientation a viewer shows.

    JPEG, PNG, BMP, TIFF, WebP, ...; grayscale, palette, RGBA (alpha dropped), 16-bit (scaled
    0..65535 -> 0..255); the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so a phone
    photo is predicted and its outputs sized as it is displayed. The first frame of a multi-frame file.
    More than `max_pixels` pixels in the header: `ImageTooLargeError`, nothing decoded.
    """
    return read_image_reduced(path, None, max_pixels).rgb


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a class-index PNG (palette "P", grayscale "L" or 1-bit "1": 0/1) to uint8 (H, W).

    An RGB colour-coded mask is refused: its colours are not class indices, and converting them
    silently would give wrong labels.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1"):
                raise ImageReadError(
                    f"mask {path} has PIL mode {im.mode!r}; expected a single-channel index PNG (P, L or 1-bit)"
                )
            arr = np.array(im).astype(np.uint8)  # (H, W) indices (palette indices for "P", 0/1 for "1")
    except FileNotFoundError as e:
        raise ImageReadError(f"missing mask: {path}") from e
    except ImageReadError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read mask {path}: {e}") from e
    return arr


def write_index_png(
    path: str | os.PathLike[str], mask: np.ndarray, text: Mapping[str, str] | None = None, background: bool = True
) -> None:
    """Write uint8 (H, W) class indices as a palette PNG, atomically (:func:`~clustercam_pl.utils.files.atomic_write`).

    A reader never sees a half-written mask: an interrupted run leaves only a partial file. Missing
    parent folders are created (image ids of folder datasets are paths such as ``scans/a/001``).
    ``text`` is stored as PNG text chunks (``Image.open(path).text`` reads them back). ``background``:
    which label convention the colours follow (:func:`label_palette`; the values are written as given).
    """
    path = Path(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask for {path} must be uint8 (H, W), got {mask.dtype} {mask.shape}")
    h, w = mask.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    im.putpalette(_PALETTE if background else label_palette(False))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
    with atomic_write(path) as f:
        im.save(f, format="PNG", pnginfo=info)
