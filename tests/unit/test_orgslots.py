"""Per-organization slots: a tenant's held threads are bounded, others unaffected."""

from __future__ import annotations

import pytest

from hangar.controlplane.orgslots import OrgSlots
from hangar.errors import Conflict


def test_an_organization_gets_its_slots_and_no_more() -> None:
    slots = OrgSlots(2, "commands")
    with slots.hold("globex"), slots.hold("globex"):
        with pytest.raises(Conflict, match="2 commands"), slots.hold("globex"):
            pass
        with slots.hold("acme"):  # another organization is not affected
            pass
    with slots.hold("globex"):  # released when the blocks end, even on error
        pass
