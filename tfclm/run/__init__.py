"""The run: what `tfclm fit` does, phase by phase, above every stage.

`fit` (tfclm.run.fit) reads top to bottom as the run's phases: data, model,
resume, trainer, the first writes, callbacks, training, then evaluation,
save, samples and results. `batches` hides whether the data is streamed,
`callbacks` builds the run's callbacks (trackers, the Hub, logging), `logs`
carries what the run logged over a resume, and `report` is what results.json
holds. This package imports every stage, and no stage imports it: only the
CLI and `tfclm.fit` do.
"""
