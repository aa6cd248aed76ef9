"""Stand-in: names resolve at import; calling any of them raises."""


def __getattr__(name):
    if name == "InterpolationMode":
        from . import InterpolationMode

        return InterpolationMode

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: transforms.functional.{name} is not available in tests")

    return unavailable
