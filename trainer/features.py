"""The data and signature contract shared by ExampleGen, Transform, Trainer and serving.

Kept free of TensorFlow imports so that the serving code and the CLI can read it cheaply.
"""

IMAGE_KEY = 'image'
LABEL_KEY = 'label'
SPAN_KEY = 'span'          # which data an example came from: 0 = base files, N = span N

IMAGE_HEIGHT = 28
IMAGE_WIDTH = 28
IMAGE_PIXELS = IMAGE_HEIGHT * IMAGE_WIDTH
PIXEL_MAX = 255
NUM_CLASSES = 10

# Split names written by the MNIST ExampleGen: `train` and `eval` are carved from the
# training file, `test` is the whole test file and only the Evaluator reads it.
# `holdout` holds each span's seeded holdout (its examples keep their `span`): evaluated
# beside `test`, each span its own slice; the gate reads the canonical test split only.
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'
TEST_SPLIT = 'test'
HOLDOUT_SPLIT = 'holdout'
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT, HOLDOUT_SPLIT)
BASE_SPAN = 0

# Serving signatures of the exported SavedModel.
SERVING_DEFAULT = 'serving_default'          # raw pixels -> probabilities, classes
SERVING_TF_EXAMPLE = 'serving_tf_example'    # serialized tf.Example -> classes, scores
PIXELS_INPUT = 'image'                       # float32 [None, 28, 28], values 0-255
EXAMPLES_INPUT = 'inputs'                    # string [None], TF Serving's classify name
PROBABILITIES_OUTPUT = 'probabilities'       # float32 [None, 10]
CLASSES_OUTPUT = 'classes'                   # int64 [None] (serving_default)
CLASSIFY_CLASSES_OUTPUT = 'classes'          # string [None, 10] (serving_tf_example)
CLASSIFY_SCORES_OUTPUT = 'scores'            # float32 [None, 10] (serving_tf_example)
CLASSIFY_METHOD_NAME = 'tensorflow/serving/classify'
