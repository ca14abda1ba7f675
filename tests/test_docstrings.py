"""Every public function, class and public method of torch_mhc (a module's ``__all__``
where it has one) has a docstring."""
import importlib
import inspect
import pkgutil

import torch_mhc

# nn.Module hooks whose meaning the base class documents
INHERITED = {"extra_repr"}


def _public_objects():
    for info in pkgutil.walk_packages(torch_mhc.__path__, "torch_mhc."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        mod = importlib.import_module(info.name)
        public = getattr(mod, "__all__", None)
        for name, obj in vars(mod).items():
            if public is not None and name not in public:
                continue
            obj = getattr(obj, "fn", obj) if type(obj).__name__ == "LazyJit" else obj
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{mod.__name__}.{name}", obj
                for attr, member in vars(obj).items():
                    member = getattr(member, "__func__", member)
                    if (not attr.startswith("_") and attr not in INHERITED
                            and (inspect.isfunction(member) or isinstance(member, property))):
                        yield f"{mod.__name__}.{name}.{attr}", member


def test_public_names_have_docstrings():
    missing = [name for name, obj in _public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, missing
