"""Signatures document their contract; device errors read well as text."""

import inspect

from ingot import signatures as s


def test_every_signature_method_has_a_contract_docstring():
    for kind, cls in s.KINDS.items():
        assert inspect.getdoc(cls), kind
        for name, member in vars(cls).items():
            if name.startswith("_") or not callable(member) and not isinstance(member, property):
                continue
            fn = member.fget if isinstance(member, property) else member
            assert inspect.getdoc(fn), f"{cls.__name__}.{name} has no docstring"


def test_kind_names_round_trip():
    for kind, cls in s.KINDS.items():
        assert s.kind_of(cls) == kind
    assert set(s.AMBIENT) <= set(s.KINDS)


def test_errors_carry_what_went_wrong_and_read_well():
    assert str(s.NotFound("a/b")) == "not found: 'a/b'"
    assert s.NotFound("a/b").key == "a/b"
    err = s.Conflict("k", b"\x01", None)
    assert "expected 01" in str(err) and "absent" in str(err)
    assert "exceed the limit of 65507" in str(s.MessageTooLong(70000, 65507))
    assert s.InvalidKey("../x", "'..' segment").reason == "'..' segment"
    for cls in (s.NotFound, s.Conflict, s.AddressInUse, s.TlsError, s.Closed):
        assert issubclass(cls, s.DeviceError)
