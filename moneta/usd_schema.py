"""The `MonetaMemory` prim type: a codeless USD schema shipped inside the package.

`moneta/schema/` holds ``plugInfo.json`` and ``generatedSchema.usda`` (generated from
``schema.usda`` by usdGenSchema). Importing this module registers that directory
with the plugin registry, so users never set ``PXR_PLUGINPATH_NAME``.

``Usd.SchemaRegistry`` reads plugins once, when it is first built. Registration
must therefore happen before anything in the process builds it (opening a stage
does); ``moneta`` imports this module before it touches USD. If a program built the
registry earlier, prims are still authored with the type name and typed
attributes, and a warning says why the prim definition is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pxr import Plug, Sdf, Usd

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
MEMORY_TYPE_NAME = "MonetaMemory"

# Attribute name -> value type, in the order they are authored.
MEMORY_ATTRIBUTES: dict[str, Sdf.ValueTypeName] = {
    "payload": Sdf.ValueTypeNames.String,
    "utility": Sdf.ValueTypeNames.Float,
    "attendedCount": Sdf.ValueTypeNames.Int,
    "protectedFloor": Sdf.ValueTypeNames.Float,
    "lastEvaluated": Sdf.ValueTypeNames.Double,
    "priorState": Sdf.ValueTypeNames.Token,
}

# The schema's fallback values (generatedSchema.usda), used where a layer has no opinion.
MEMORY_FALLBACKS: dict[str, object] = {
    "payload": "",
    "utility": 0.0,
    "attendedCount": 0,
    "protectedFloor": 0.0,
    "lastEvaluated": 0.0,
    "priorState": "consolidated",
}

PRIOR_STATE_TOKENS: tuple[str, ...] = ("volatile", "staged_for_sync", "consolidated", "pruned")


def register_schema() -> bool:
    """Register the schema plugin (idempotent); True if the registry knows the type."""
    Plug.Registry().RegisterPlugins(str(SCHEMA_DIR))
    known = Usd.SchemaRegistry().FindConcretePrimDefinition(MEMORY_TYPE_NAME) is not None
    if not known:
        log.warning(
            "USD schema registry was built before moneta registered %s from %s; "
            "import moneta before opening any USD stage so the prim definition is known",
            MEMORY_TYPE_NAME,
            SCHEMA_DIR,
        )
    return known


SCHEMA_REGISTERED = register_schema()
