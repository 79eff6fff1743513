"""The blessing's names for the served baseline, as TFX's Kubeflow entrypoint reads them."""

from __future__ import annotations

import pytest
from tfx.components.evaluator import constants
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry_utils
from tfx.types import standard_artifacts, standard_component_specs

from components.served_baseline import Executor

CANDIDATE_ID = 1234  # the candidate's id as TFX's entrypoint hashes it from its MLMD name


def blessing_as_tfx_writes_it():
  """What TFX's Evaluator sets when it compares with a baseline: the served copy's id is
  0 (it is no ML Metadata artifact) and its URI a temporary folder."""
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY,
                                   CANDIDATE_ID)
  blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, 0)
  blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY,
                                      '/tmp/executor/served-7')
  return blessing


def test_tfx_entrypoint_fails_on_the_served_copy_s_id():
  """Why the id goes: the Kubeflow entrypoint maps every id on a blessing to a name."""
  with pytest.raises(KeyError):
    entry_utils.refactor_model_blessing(blessing_as_tfx_writes_it(),
                                        {CANDIDATE_ID: 'candidate'})


def test_the_blessing_names_the_served_version_not_a_bogus_id():
  blessing = blessing_as_tfx_writes_it()
  Executor._name_the_served_baseline(  # pylint: disable=protected-access
      {standard_component_specs.BLESSING_KEY: [blessing]}, 'gs://b/serving/mnist/7')
  assert not blessing.has_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY)
  assert blessing.get_string_custom_property(
      constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY) == 'gs://b/serving/mnist/7'
  entry_utils.refactor_model_blessing(blessing, {CANDIDATE_ID: 'candidate'})
  assert blessing.get_string_custom_property(
      constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY) == 'candidate'
