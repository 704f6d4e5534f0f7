"""The training stage: optimizer, train step, checkpoints, tf.distribute, callbacks, and the run.

`run.fit` orchestrates a whole run (data -> model -> Keras fit -> evaluation
-> save -> samples -> results); the other modules each hold one part.
`callbacks` holds Keras callbacks usable in any `model.fit` and imports
neither `tfclm.config` nor the CLI.
"""
