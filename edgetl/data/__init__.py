"""Images in, shared by every stage: one image-folder walker, the dataset readers, the inputs models are checked on.

    bundle = load_data("photos/", preprocessing=prep)             # training: decoded once, split, in memory
    inputs = gather_inputs(run, labels=labels, preprocessing=prep, data=None, samples=32)   # export and verify

    folders.py   the image-folder walker (one set of rules for every stage), listing and the seeded split
    arrays.py    torchvision's array datasets (CIFAR): from the local cache, downloaded once for training
    datasets.py  load_data: a folder or named set, split, decoded once into uint8 tensors
    augment.py   batch augmentation and normalization on uint8 tensors
    inputs.py    real images preprocessed from the manifest alone, plus noise; train images for INT8 calibration
    sample.py    the generated sample dataset

Decoding one image (EXIF, 16-bit, alpha, guards) is edgetl/images.py; the eval transform is edgetl/preprocessing.py.
"""
