"""Stand-in: names resolve at import; using any of them raises."""


def __getattr__(name):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: datasets.{name} is not available in tests")

    return type(name, (), {"__init__": unavailable})
