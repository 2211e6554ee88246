"""The schema layer: JSON Schemas, YAML loading with positions, diagnostics, CRD generation.

This layer sits right above the resource types and below everything with I/O to the
outside world.  ``smtpctl validate`` runs entirely inside it, so nothing here may import
pydantic, the SMTP, OAuth or Kubernetes stacks (a test runs validate in a subprocess and
checks ``sys.modules``).  Modules:

* :mod:`~reconciler.schema.diagnostics` - the one shape every problem is reported in;
* :mod:`~reconciler.schema.loader` - bounded, position-aware YAML/JSON reading;
* :mod:`~reconciler.schema.positions` - JSON path -> line/column, only for bad documents;
* :mod:`~reconciler.schema.schemas` - finding and compiling the JSON Schemas;
* :mod:`~reconciler.schema.messages` - schema errors -> messages a person understands;
* :mod:`~reconciler.schema.semantic` - checks beyond the schema (warnings and errors);
* :mod:`~reconciler.schema.validate` - the validate core over files and streams;
* :mod:`~reconciler.schema.report` - text, json, junit and github renderings;
* :mod:`~reconciler.schema.crdgen` - ``python -m reconciler.schema.crdgen`` writes the CRDs
  (and :mod:`~reconciler.schema.docgen` the field reference, docs/resources.md).

Public API used by other layers (keep it stable): ``validate.Options``,
``validate.Validator`` (``add_paths``/``add_bytes``/``finish``), ``validate.validate_paths``,
``validate.validate_bytes``, ``Report.valid``/``.diagnostics``, ``report.render`` and
``report.render_text``.  ``apply``/``plan``/``delete``/``test`` run the same checks as
``smtpctl validate`` before building the typed models, so users see one wording.
"""
