"""Images read from files, decoded once a process. Every checkpoint's evaluation asks the same held-out prompts, and
decoding their PNGs and hashing their pixels again for each (forgetting/models.py:PromptBatches keys batches by
content) was some 4% of a tiny evaluation; a GRPO batch holds each puzzle's image num_generations times, which the
training dataset decoded row by row (forgetting/trainer.py:image_dataset). Off with FORGETTING_FAST_PATHS=0."""

import hashlib
import os
import struct
from collections import OrderedDict

from PIL import Image

from forgetting import fast_paths
from forgetting.storage import DamagedFile, remake


def decode_rgb(path) -> Image.Image:
    """The image in path as RGB; DamagedFile naming it (and the product folder to delete, for a stored one) when it
    cannot be decoded: cut short, overwritten, not an image."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, struct.error) as err:  # PIL's errors for a damaged file
        raise DamagedFile(f"{path} cannot be read as an image ({err}){remake(path)}") from None


def pixel_digest(image: Image.Image) -> str:
    """An image as a digest of its mode, size and pixels."""
    return f"image:{image.mode}:{image.size}:{hashlib.blake2b(image.tobytes(), digest_size=20).hexdigest()}"


class ImageFiles:
    """Decoded RGB images by file (path, modification time and size), up to max_bytes of pixels, least recently
    used dropped first. Every caller gets the same Image object: it is read, never changed in place (whoever draws
    on one copies it first). The digest of a kept image is computed once (digest())."""

    def __init__(self, max_bytes: int = 1 << 28):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, Image.Image] = OrderedDict()
        self.digests: dict[int, str | None] = {}  # id of a kept image -> its digest, once computed
        self.size = 0

    def rgb(self, path) -> Image.Image:
        if not fast_paths.enabled():
            return decode_rgb(path)
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        image = self.entries.get(key)
        if image is None:
            image = self.entries[key] = decode_rgb(path)
            self.digests[id(image)] = None
            self.size += _nbytes(image)
            while self.size > self.max_bytes and len(self.entries) > 1:
                old = self.entries.popitem(last=False)[1]
                self.size -= _nbytes(old)
                del self.digests[id(old)]
        self.entries.move_to_end(key)
        return image

    def digest(self, image: Image.Image) -> str:
        """pixel_digest(image), computed once for an image this cache handed out."""
        if id(image) not in self.digests:
            return pixel_digest(image)
        if self.digests[id(image)] is None:
            self.digests[id(image)] = pixel_digest(image)
        return self.digests[id(image)]


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


IMAGE_FILES = ImageFiles()
