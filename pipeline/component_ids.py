"""The DAG's component ids, defined once.

ML Metadata records executions under these ids, so the summary, the Kubeflow runner
(which adapts tasks by id), the benchmarks and the tests read them from here; renaming a
node here renames it everywhere. No TFX import: cheap for any reader.
"""

EXAMPLE_GEN = 'MnistExampleGen'
STATISTICS_GEN = 'StatisticsGen'
SCHEMA_GEN = 'ImportSchemaGen'
EXAMPLE_VALIDATOR = 'ExampleValidator'
ANOMALIES_GATE = 'AnomaliesGate'
DRIFT_CHECK = 'DriftCheck'
TRANSFORM = 'Transform'
TRAINER = 'Trainer'
EVALUATOR = 'Evaluator'
PUSHER = 'Pusher'

# The order they run in.
ALL = (EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, ANOMALIES_GATE, DRIFT_CHECK,
       TRANSFORM, TRAINER, EVALUATOR, PUSHER)
