"""Every event prints, compares and hashes as a dataclass of its fields would (one shared set
of methods on `Event` stands in for the generated ones), and stays frozen."""

import dataclasses
import inspect

import pytest

from hyperdrive.pipeline import events as ev

EVENTS = [
    cls
    for _, cls in inspect.getmembers(ev, inspect.isclass)
    if issubclass(cls, ev.Event) and cls is not ev.Event
]


def _twin(cls: type[ev.Event]) -> type:
    """The same fields in a plain frozen dataclass, with the methods dataclasses generate."""
    specs = [
        (f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=True, kw_only=True)


def _sample(cls: type) -> dict[str, object]:
    """A value in every field: text, or a number where the field holds one."""
    values: dict[str, object] = {}
    for n, f in enumerate(dataclasses.fields(cls)):
        values[f.name] = n if "int" in str(f.type) and "str" not in str(f.type) else f"v{n}"
    return values


def test_there_are_events_to_check() -> None:
    assert len(EVENTS) > 60


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.__name__)
def test_an_event_behaves_as_its_dataclass_twin(cls: type[ev.Event]) -> None:
    twin, values = _twin(cls), _sample(cls)
    event, same, bare = cls(**values), cls(**values), cls()  # type: ignore[arg-type]
    assert repr(event) == repr(twin(**values))
    assert repr(bare) == repr(twin())
    assert event == same
    assert hash(event) == hash(same) == hash(twin(**values))
    assert event != bare
    assert event != twin(**values)  # another class is never equal, as with dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.app = "other"  # type: ignore[misc]
    assert dataclasses.replace(event, app="other").app == "other"


def test_events_of_two_classes_with_the_same_fields_differ() -> None:
    assert ev.DaemonStopping(app="a") != ev.DaemonStarted(app="a", version="")
    assert {ev.DaemonStopping(app="a"), ev.DaemonStopping(app="a")} == {ev.DaemonStopping(app="a")}
