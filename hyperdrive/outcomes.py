"""Which events end a story, for those who follow one (the CLI, ssh, the pushing git client).

A module of its own so that `hd` and git's hooks need not import every event class to know.
"""

TERMINAL = frozenset({"DeployFinished", "DeployFailed", "DeploySuperseded", "AppRetired"})
OUTCOMES = TERMINAL | {"TriggerIgnored", "HeadquartersSynced", "HeadquartersSyncFailed"}
