"""Validation of ARM resource bodies against Azure's own models (the azure-mgmt-* Python SDKs).

Each SDK model class has an `_attribute_map` of {python name: {"key": "<json path>", "type": ...}}, where
the key may be a flattened path ("properties.serverFarmId") and the type is a primitive ("str", "bool",
"int", "object", ...), a list ("[NameValuePair]"), a dictionary ("{UserAssignedIdentity}") or another
model class of the same API version. A body property that matches no key, at any depth, does not
exist in that resource type's API version: ARM would ignore it or reject it.
Used by tests/check_infra.py (Bicep) and for infra/adf (Data Factory, polymorphic by "type").
"""

import importlib
import re

PRIMITIVES = {"str", "int", "long", "float", "bool", "object", "iso-8601", "rfc-1123", "duration", "date",
              "bytearray", "base64", "unix-time", "decimal", "time"}
# Keys of a Bicep resource body that are the language's, not the resource's.
BICEP_ENVELOPE = {"parent", "scope", "dependsOn", "name"}
EXPRESSION_KEYS = {"operator", "function", "interpolation", "loop_type", "condition"}


def is_expression(value):
    """A pycep expression node (function call, operator, loop...) rather than an object literal."""
    return isinstance(value, dict) and len(value) >= 1 and set(value) <= EXPRESSION_KEYS | {"config", "detail"} \
        and bool(set(value) & EXPRESSION_KEYS)


def split_key(key):
    return [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", key)]


class Models:
    def __init__(self, module_name):
        self.module = importlib.import_module(module_name)

    def cls(self, name):
        return getattr(self.module, name, None)


def concrete(cls, value, module):
    """The subclass a discriminator ("type") selects, for polymorphic models, searched through every
    level (Activity → ExecutionActivity → CopyActivity)."""
    if not isinstance(value, dict):
        return cls
    seen, queue = set(), [cls]
    while queue:
        c = queue.pop(0)
        if c.__name__ in seen:
            continue
        seen.add(c.__name__)
        for field, mapping in (getattr(c, "_subtype_map", None) or {}).items():
            wanted = value.get(field)
            if isinstance(wanted, str) and wanted in mapping and hasattr(module, mapping[wanted]):
                return getattr(module, mapping[wanted])
            queue += [getattr(module, n) for n in mapping.values() if hasattr(module, n)]
    return cls


def check_object(models, cls, value, where, errors, envelope=frozenset()):
    """Checks every key of an object literal against `cls`; appends "where.key: why" to errors."""
    if not isinstance(value, dict) or is_expression(value):
        return
    cls = concrete(cls, value, models.module)
    amap = {tuple(split_key(spec["key"])): spec["type"] for spec in cls._attribute_map.values()}
    _walk(models, cls.__name__, amap, (), value, where, errors, envelope)


def _walk(models, cls_name, amap, prefix, value, where, errors, envelope):
    for key, v in value.items():
        if not prefix and key in envelope:
            continue
        path = prefix + (key,)
        if path in amap:
            check_typed(models, amap[path], v, f"{where}.{key}", errors)
        elif any(k[:len(path)] == path for k in amap):
            if isinstance(v, dict) and not is_expression(v):
                _walk(models, cls_name, amap, path, v, where + "." + key, errors, envelope)
        else:
            errors.append(f"{where}.{key}: no such property in {cls_name}")


def check_typed(models, typ, value, where, errors):
    if is_expression(value) or value is None:
        return
    if typ.startswith("[") and typ.endswith("]"):
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_typed(models, typ[1:-1], item, f"{where}[{i}]", errors)
        return
    if typ.startswith("{") and typ.endswith("}"):
        if isinstance(value, dict):
            for k, item in value.items():
                check_typed(models, typ[1:-1], item, f"{where}[{k}]", errors)
        return
    if typ in PRIMITIVES or typ.lower() in PRIMITIVES:
        if isinstance(value, bool) and typ not in ("bool", "object"):
            errors.append(f"{where}: a boolean where {typ} is expected")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and typ in ("bool", "str"):
            errors.append(f"{where}: a number where {typ} is expected")
        elif isinstance(value, (dict, list)) and typ not in ("object",):
            errors.append(f"{where}: an object or array where {typ} is expected")
        return
    cls = models.cls(typ)
    if cls is None:
        # An enum (a string) or a model of another module: accept strings, check nothing more.
        return
    if hasattr(cls, "_attribute_map"):
        if isinstance(value, dict):
            check_object(models, cls, value, where, errors)
        elif isinstance(value, (bool, int, float, list)):
            errors.append(f"{where}: {type(value).__name__} where an object ({typ}) is expected")


def check_read(models, cls, path, where, errors):
    """A read like `storage.properties.primaryEndpoints.blob`: each step must exist in the model."""
    amap = {tuple(split_key(spec["key"])): spec["type"] for spec in cls._attribute_map.values()}
    steps = tuple(path)
    for n in range(len(steps), 0, -1):
        if steps[:n] in amap:
            rest = steps[n:]
            if not rest:
                return
            typ = amap[steps[:n]]
            sub = models.cls(typ)
            if sub is None or not hasattr(sub, "_attribute_map"):
                if typ in ("object",) or typ.startswith("{"):
                    return
                errors.append(f"{where}: {'.'.join(steps[:n])} is a {typ}, it has no {'.'.join(rest)}")
                return
            check_read(models, sub, rest, where, errors)
            return
    if any(k[:len(steps)] == steps for k in amap):
        return  # an intermediate object of flattened keys (e.g. `properties`)
    errors.append(f"{where}: no such property {'.'.join(steps)} in {cls.__name__}")
