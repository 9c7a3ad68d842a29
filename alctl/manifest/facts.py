


# Known dataset facts used by cross-field checks before any file is read: (classes, pool size).
DATASET_FACTS: dict[str, tuple[int, int]] = {
    "mnist5k": (10, 4000),
    "digits": (10, 1397),
    "mnist": (10, 60000),
    "svhn": (10, 73257),
    "cifar10": (10, 50000),
    "cifar100": (100, 50000),
}
# Channels of the named datasets' images as stored (imagefolder: RGB unless dataset.channels is 1).
NATIVE_CHANNELS: dict[str, int] = {"mnist5k": 1, "digits": 1, "mnist": 1, "svhn": 3, "cifar10": 3, "cifar100": 3,
                                   "imagefolder": 3}
