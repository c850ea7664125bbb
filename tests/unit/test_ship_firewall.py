"""The ships' firewall script and the doctor's reading of other tables' forward policies."""

from __future__ import annotations

from hyperdrive.traffic import Traffic, forward_drops


def test_the_table_masquerades_out_filters_input_and_keys_egress_by_ship_address() -> None:
    script = Traffic("hd", "10.213.0.1/24", device="hdbr0")._table_script()
    assert 'postrouting ip saddr 10.213.0.0/24 oifname != "hdbr0" masquerade' in script
    assert 'forward iifname "hdbr0" ip saddr vmap @ship_egress' in script
    assert script.index("ct state established,related accept") < script.index("vmap")
    assert 'forward iifname "hdbr0" accept' in script
    assert 'input iifname "hdbr0" ip daddr 10.213.0.1 udp dport 53 accept' in script
    assert 'input iifname "hdbr0" ip daddr 10.213.0.1 tcp dport @offered_ports accept' in script
    assert script.rstrip().endswith('input iifname "hdbr0" drop')


def test_egress_off_for_every_ship_closes_the_default() -> None:
    script = Traffic("hd", "10.213.0.1/24", egress=False)._table_script()
    assert 'forward iifname "hdbr0" jump egress_closed' in script
    assert 'forward iifname "hdbr0" accept' not in script


def test_forward_chains_that_drop_elsewhere_are_found() -> None:
    listing = {
        "nftables": [
            {"metainfo": {}},
            {
                "chain": {
                    "family": "ip",
                    "table": "filter",
                    "name": "FORWARD",
                    "hook": "forward",
                    "policy": "drop",
                }
            },
            {
                "chain": {
                    "family": "ip",
                    "table": "hd",
                    "name": "forward",
                    "hook": "forward",
                    "policy": "drop",
                }
            },
            {
                "chain": {
                    "family": "inet",
                    "table": "fw",
                    "name": "fwd",
                    "hook": "forward",
                    "policy": "accept",
                }
            },
            {
                "chain": {
                    "family": "inet",
                    "table": "fw",
                    "name": "in",
                    "hook": "input",
                    "policy": "drop",
                }
            },
        ]
    }
    assert forward_drops(listing, "hd") == ["ip filter FORWARD"]
    fix = Traffic("hd", "10.213.0.1/24").forward_fix("ip filter FORWARD")
    assert "nft insert rule ip filter FORWARD iifname hdbr0 accept" in fix
    assert "DOCKER-USER" in fix
