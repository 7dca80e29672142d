"""Names the data layer accepts, importable without torch (the recipe checks read them before any work)."""

BENCHMARKS = (
    "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "imagefolder", "parquet", "embedded",
    "tinyimagenet_lt",
)
SELECTIONS = ("first", "shuffle")
SAMPLERS = ("shuffle", "class_balanced", "sequential")
PIPELINES = ("tensor", "timm")
