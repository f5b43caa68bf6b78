"""IKEv1 (RFC 2407, 2408, 2409; NAT-T RFC 3947/3948; DPD RFC 3706), sans-IO.

    core.py       Ikev1Core: datagrams/time in, actions out; timers, status (behind ike/manager.py)
    phase1.py     Main Mode and Aggressive Mode; PSK, rsa-sig, rsa-encr; NAT-D, vendor IDs
    quick.py      Quick Mode: proxy IDs, PFS, ESP/AH/bundles, lifetimes, commit bit, KEYMAT
    info.py       Informational: Delete, INITIAL-CONTACT, INVALID-SPI, DPD, NAT keepalives
    keys.py       SKEYID family, key expansion, IVs, HASH_I/R, QM hashes, KEYMAT (pure functions)
    policy.py     ISAKMP policies and transform sets <-> SA payloads; choosing from offers
    payloads.py   IKEv1 payload bodies on the shared ike/codec.py
    identity.py   ID payloads, DN handling, certificates
    state.py      the data the exchanges move along
    constants.py  IANA numbers and their canonical names
"""
