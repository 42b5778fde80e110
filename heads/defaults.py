"""The paper's head settings, defined once (docs/paper.md): the estimators' defaults, the
runs' defaults and the command line's help read them from here.

Stage I: a SAP probe per plane, Adam at 5e-4 with a cosine schedule, 10 epochs, batch 10.
Stage II: simple concatenation, Adam at 5e-5, 5 epochs, batch 10.
"""

from types import MappingProxyType

from orthodiff.options import Method, Pooling

POOLING = Pooling.sap.value  # plain strings: scikit-learn wants estimators' defaults of plain types
METHOD = Method.concat.value
PROBE = MappingProxyType({"epochs": 10, "lr": 5e-4, "batch_size": 10})
FUSION = MappingProxyType({"epochs": 5, "lr": 5e-5, "batch_size": 10})

