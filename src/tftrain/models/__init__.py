"""The networks: built-in models, keras.applications from scratch, a user's builder or saved model file, and the
portable copy that gets logged.

May import: config, errors, user_code, data (augmentation layers to strip). Never training, tracking, ship, cli.
"""
