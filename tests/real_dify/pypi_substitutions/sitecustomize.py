"""The one code-side consequence of installing Dify's api from PyPI alone (see harness.api_requirements).

Dify 1.15.0 pins flask-restx to a git fork that adds OpenAPI-3 docs features; no package index
has it, so the harness installs PyPI's flask-restx 1.3.2 instead. At import, Dify's
``libs/flask_restx_compat.install_swagger_compatibility()`` wraps ``Swagger.schema_from_parameter``
and other docs-generation hooks that only the fork has, and the import fails with AttributeError.
Those hooks only shape the generated Swagger/OpenAPI documents (``/console/api/swagger.json`` and
friends), which no test reads. Marking the compatibility layer as already installed skips it;
request handling, validation and marshalling are untouched. Dify's own source is not modified.

Loaded by Python at start-up because the harness puts this folder on PYTHONPATH of the api, the
worker and flask commands (and nowhere else).
"""

try:
    from flask_restx.swagger import Swagger
except ImportError:  # not a Dify process
    Swagger = None

if Swagger is not None and not hasattr(Swagger, "schema_from_parameter"):
    Swagger._dify_swagger_compatibility_installed = True
