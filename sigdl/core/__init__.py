"""The shared core: model zoo, data sets, artifact store, MLflow lineage, typed settings, ONNX
export/import, the .sdc container, and the typed stage reports and progress events.

It imports nothing of `services/` or `pipelines/` and knows no gRPC, KFP or CLI framework
(tests/sigdl/test_layers.py checks it); `sigdl/cli.py` and `sigdl/api.py` compose the layers.
"""

__version__ = "0.1.0"
