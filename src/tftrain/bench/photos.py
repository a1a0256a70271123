"""A folder of real photographs of mixed sizes, made offline from the photographs that installed packages ship
(scikit-image's data folder, scikit-learn's sample images, Matplotlib's sample data): the data a real user brings,
for the benchmark's panel and the tests.

Each class is one photograph; its images are random crops of it (a random square-ish window, 40 to 180 pixels a
side, a quarter of them turned gray, saved as JPEG or PNG), so the folder has the traits of a user's photos: nearly
every file a size of its own, colour and gray mixed, two formats. Telling the photographs apart from a crop is a
real vision task (texture, colour, shapes) that a model must learn; a model at chance (1/classes) has learnt
nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# class name -> (package, file inside the package); every one a photograph, gray ones included
PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "cat": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "galaxies": ("skimage", "data/hubble_deep_field.jpg"),
    "cameraman": ("skimage", "data/camera.png"),
    "temple": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
SIDES = (40, 180)  # a crop's sides, in pixels
GRAY_SHARE = 0.25


def photo_path(name: str) -> Path:
    """The file of photograph `name`, inside its installed package."""
    package, relative = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"photo {name} needs the package {package} (pip install 'tftrain[test]')")
    return Path(spec.origin).parent / relative


def _crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = photo.shape[:2]
    side = int(rng.integers(SIDES[0], min(SIDES[1], height, width) + 1))
    h = int(np.clip(side * rng.uniform(0.75, 1.33), SIDES[0], height))
    w = int(np.clip(side * rng.uniform(0.75, 1.33), SIDES[0], width))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return photo[top : top + h, left : left + w]


def write_photo_folder(folder: Path, per_class: int, classes: int = len(PHOTOS), seed: int = 0) -> Path:
    """`per_class` crops of each of the first `classes` photographs as FOLDER/<photo>/<n>.jpg|png; the folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in list(PHOTOS)[:classes]:
        with Image.open(photo_path(name)) as image:
            photo = np.asarray(image.convert("RGB"))
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            crop = Image.fromarray(_crop(photo, rng))
            if rng.random() < GRAY_SHARE:
                crop = crop.convert("L")
            if rng.random() < 0.5:
                crop.save(folder / name / f"{i:04d}.jpg", quality=int(rng.integers(70, 96)))
            else:
                crop.save(folder / name / f"{i:04d}.png")
    return folder
