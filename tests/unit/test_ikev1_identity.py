"""IKEv1 ID payloads from the config's identities (one DN parser: config.parse_identity),
checked against DER built independently with cryptography, and shown back so that the
config reads them again."""
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from vpnd.config import parse_identity
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1.identity import describe_id, id_matches, id_payload
from vpnd.ike.v1.payloads import ID

from test_ikev1_harness import pair

ORG = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
                 x509.NameAttribute(NameOID.COMMON_NAME, "gw")]).public_bytes()


@pytest.mark.parametrize("text", ["C=CH, O=Example\\, Inc., CN=gw", "/C=CH/O=Example\\, Inc./CN=gw",
                                  "c=CH,o=Example\\, Inc.,cn=gw"])
def test_dn_text_forms_give_the_same_der(text):
    """An escaped comma and the OpenSSL '/' form: the removed copy of the DN parser split
    "O=Example\\, Inc." in two and did not know '/'."""
    p = id_payload(text)
    assert (p.id_type, p.data) == (C.ID_DER_ASN1_DN, ORG)
    assert id_payload(parse_identity(text)).data == ORG


def test_shown_dn_reads_back():
    text = ("C=CH, ST=Zug, L=Baar, O=Example\\, Inc., OU=Net, CN=gw, E=ops@example.com, DC=example, "
            "SN=Muster, serialNumber=42, G=Max, T=Admin, UID=mm, STREET=Main 1, postalCode=6340")
    shown = describe_id(id_payload(text))
    assert shown == text
    assert parse_identity(shown) == parse_identity(text)


def test_other_kinds():
    assert id_payload("10.1.2.3") == ID(C.ID_IPV4_ADDR, 0, 0, bytes([10, 1, 2, 3]))
    assert id_payload("@gw.example").data == b"gw.example"
    assert id_payload("ops@example.com").id_type == C.ID_USER_FQDN
    with pytest.raises(ValueError):
        id_payload("XX=nothing, CN=gw")
    assert id_matches(parse_identity("/C=CH/O=Example\\, Inc./CN=gw"), ID(C.ID_DER_ASN1_DN, 0, 0, ORG))


def test_exchange_with_dn_written_two_ways():
    net = pair({"local_id": "C=CH, O=Example\\, Inc., CN=gw"}, {"remote_id": "/C=CH/O=Example\\, Inc./CN=gw"})
    assert len(net.installs("A")) == 1 and len(net.installs("B")) == 1
    assert net.b.status_ike_sas(net.now)[0]["remote_id"] == "C=CH, O=Example\\, Inc., CN=gw"
