"""The data: image folders (scan, decode, cache, `image_size=auto`), other sources (tensorflow-datasets folders, a
user's data function), the built-in datasets, the tf.data pipelines and augmentation.

May import: config, errors, user_code. Never models, training, tracking, ship, search, cluster, cli.
"""
