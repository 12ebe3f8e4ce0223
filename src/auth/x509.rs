//! The two subject attributes client-certificate authentication needs: the common name (the
//! user) and the organizations (the groups), read as Go's `crypto/x509` reads them.
//!
//! webpki hands over the raw subject; this walks its DER (`SEQUENCE OF SET OF
//! AttributeTypeAndValue`) with bounds checks on every step.

use rustls_pki_types::CertificateDer;

/// `id-at-commonName` (2.5.4.3), DER-encoded.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// `id-at-organizationName` (2.5.4.10), DER-encoded.
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// What a certificate's subject says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The last `CN` (Go keeps the last one too); `None` when there is none.
    pub common_name: Option<String>,
    /// Every `O`, in order.
    pub organizations: Vec<String>,
}

/// Read the subject of a DER certificate.
pub fn subject(certificate: &CertificateDer<'_>) -> Result<Subject, String> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|err| format!("unparseable certificate: {err}"))?;
    parse_name(parsed.subject())
}

/// Parse the contents of a DER `Name` (without its outer SEQUENCE header).
pub fn parse_name(mut name: &[u8]) -> Result<Subject, String> {
    let mut subject = Subject::default();
    while !name.is_empty() {
        let (tag, mut set, rest) = read_tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return Err(format!(
                "expected a SET in the subject, found tag {tag:#04x}"
            ));
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = read_tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return Err(format!(
                    "expected a SEQUENCE in the subject, found tag {tag:#04x}"
                ));
            }
            let (oid_tag, oid, value) = read_tlv(attribute)?;
            if oid_tag != 0x06 {
                return Err("expected an attribute type OID in the subject".to_string());
            }
            let (value_tag, value, trailing) = read_tlv(value)?;
            if !trailing.is_empty() {
                return Err("trailing data in a subject attribute".to_string());
            }
            if oid == OID_COMMON_NAME {
                subject.common_name = Some(decode_string(value_tag, value)?);
            } else if oid == OID_ORGANIZATION {
                subject.organizations.push(decode_string(value_tag, value)?);
            }
        }
    }
    Ok(subject)
}

/// One DER tag-length-value: (tag, contents, what follows).
fn read_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let truncated = || "truncated DER in the certificate subject".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    if tag & 0x1f == 0x1f {
        return Err("high-tag-number DER is not used in subjects".to_string());
    }
    let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err("unsupported DER length in the certificate subject".to_string());
        }
        let (bytes, after) = rest.split_at_checked(count).ok_or_else(truncated)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte))
    };
    let (contents, after) = rest.split_at_checked(length).ok_or_else(truncated)?;
    Ok((tag, contents, after))
}

/// Decode the string types X.509 names use.
fn decode_string(tag: u8, bytes: &[u8]) -> Result<String, String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec())
            .map_err(|_| "invalid UTF-8 in a certificate subject".to_string()),
        // T61String: Go reads it as ISO 8859-1.
        0x14 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UCS-2 big endian.
        0x1e => {
            if bytes.len() % 2 != 0 {
                return Err("odd-length BMPString in a certificate subject".to_string());
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units)
                .map_err(|_| "invalid BMPString in a certificate subject".to_string())
        }
        // UniversalString: UCS-4 big endian.
        0x1c => {
            if bytes.len() % 4 != 0 {
                return Err("bad UniversalString in a certificate subject".to_string());
            }
            bytes
                .chunks_exact(4)
                .map(|quad| {
                    char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))
                        .ok_or_else(|| "bad UniversalString in a certificate subject".to_string())
                })
                .collect()
        }
        other => Err(format!(
            "unsupported string type {other:#04x} in a certificate subject"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn certificate(entries: &[(DnType, DnValue)]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in entries {
            params.distinguished_name.push(kind.clone(), value.clone());
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn common_name_is_the_user_and_organizations_are_the_groups() {
        let cert = certificate(&[
            (
                DnType::OrganizationName,
                DnValue::Utf8String("team-a".into()),
            ),
            (DnType::CommonName, DnValue::Utf8String("alice".into())),
        ]);
        let subject = subject(&cert).unwrap();
        assert_eq!(subject.common_name.as_deref(), Some("alice"));
        assert_eq!(subject.organizations, ["team-a"]);
    }

    #[test]
    fn string_types_decode_and_missing_names_are_none() {
        let cert = certificate(&[
            (
                DnType::CommonName,
                DnValue::PrintableString("system:node:a".try_into().unwrap()),
            ),
            (
                DnType::OrganizationName,
                DnValue::BmpString("grüppe".try_into().unwrap()),
            ),
        ]);
        let parsed = subject(&cert).unwrap();
        assert_eq!(parsed.common_name.as_deref(), Some("system:node:a"));
        assert_eq!(parsed.organizations, ["grüppe"]);

        let none = certificate(&[(DnType::CountryName, DnValue::Utf8String("DE".into()))]);
        assert_eq!(subject(&none).unwrap(), Subject::default());
    }

    #[test]
    fn several_organizations_keep_their_order_in_one_rdn_each() {
        // SET{SEQ{O,"a"}} SET{SEQ{CN,"x"}} SET{SEQ{O,"b"}}, written by hand.
        let attribute = |oid: &[u8], value: &str| {
            let mut seq = vec![0x06, oid.len() as u8];
            seq.extend_from_slice(oid);
            seq.extend([0x0c, value.len() as u8]);
            seq.extend_from_slice(value.as_bytes());
            let mut set = vec![0x31, seq.len() as u8 + 2, 0x30, seq.len() as u8];
            set.extend(seq);
            set
        };
        let mut name = attribute(OID_ORGANIZATION, "a");
        name.extend(attribute(OID_COMMON_NAME, "x"));
        name.extend(attribute(OID_ORGANIZATION, "b"));
        let subject = parse_name(&name).unwrap();
        assert_eq!(subject.organizations, ["a", "b"]);
        assert_eq!(subject.common_name.as_deref(), Some("x"));
        // Every truncation is an error, never a panic.
        for cut in 1..name.len() {
            let _ = parse_name(&name[..cut]);
        }
        assert!(parse_name(&name[..name.len() - 1]).is_err());
        assert!(parse_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
