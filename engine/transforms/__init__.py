"""The declarative mapping language: HL7 v2 messages, X12 transaction sets and FHIR R4 resources
-> store records (one language; each format brings its path reader, see ``format:``), and HL7
v2 -> FHIR R4 resources (records whose target is ``fhir.<ResourceType>``, one transaction Bundle
per message: :mod:`engine.transforms.nested`, :mod:`engine.transforms.fhir_out`).

Public API: :func:`load_mapping` (compile a ``mappings/*.yaml`` file once, ConfigError listing
every problem), :class:`Mapping` (``name``, ``applies(msg)``, ``run(msg)``),
:func:`compile_condition` (shared with channel filters) and, in
:mod:`engine.transforms.testing`, the mapping test runner and ``engine try``.
"""

from engine.transforms.conditions import compile_condition
from engine.transforms.mapping import Mapping, load_mapping

__all__ = ["Mapping", "compile_condition", "load_mapping"]
