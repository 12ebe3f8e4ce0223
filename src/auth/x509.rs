//! What client-certificate authentication reads from a certificate: the subject's common name
//! (the user) and organizations (the groups), and when the certificate stops being valid.
//!
//! The DER is parsed by `x509-parser`; the subject's attribute values are then read as Go's
//! `crypto/x509` reads them (`parseASN1String`, then `pkix.Name.FillFromRDNSequence`), because
//! kube-apiserver, whose certificates these are, is written in Go:
//! - the last `CN` wins, every `O` is kept in order;
//! - T61String is read as ISO 8859-1, PrintableString, IA5String and NumericString must hold
//!   only their characters, UTF8String must be UTF-8, BMPString is UCS-2 without surrogates;
//! - any other string type in any attribute makes the whole certificate unreadable (Go refuses
//!   such a certificate at the handshake).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Why a certificate cannot be read. Never carries the certificate's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Not a DER X.509 certificate.
    #[error("not a readable X.509 certificate: {0}")]
    Unparseable(String),
    /// Bytes after the certificate.
    #[error("trailing data after the certificate")]
    TrailingData,
    /// A subject attribute whose value Go would not read either.
    #[error("invalid subject attribute value: {0}")]
    Attribute(&'static str),
}

/// What a certificate's subject says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The last `CN`; `None` when there is none.
    pub common_name: Option<String>,
    /// Every `O`, in order.
    pub organizations: Vec<String>,
}

/// What authentication needs from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject.
    pub subject: Subject,
    /// The last moment the certificate is valid (X.509's `notAfter` is inclusive).
    pub not_after: SystemTime,
}

/// Read a DER certificate.
pub fn read(der: &[u8]) -> Result<CertificateFacts, CertificateError> {
    let (rest, certificate) = X509Certificate::from_der(der)
        .map_err(|err| CertificateError::Unparseable(err.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateError::TrailingData);
    }
    let not_after = certificate.validity().not_after.timestamp();
    Ok(CertificateFacts {
        subject: subject(certificate.subject())?,
        not_after: unix_time(not_after),
    })
}

/// Seconds since the epoch as a `SystemTime`; times before 1970 clamp to the epoch (such a
/// certificate has long expired either way).
fn unix_time(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// Read a parsed `Name` as Go does.
pub fn subject(name: &X509Name<'_>) -> Result<Subject, CertificateError> {
    let mut subject = Subject::default();
    for attribute in name.iter_attributes() {
        // Go decodes every value, not only CN and O: one it cannot read fails the certificate.
        let value = go_string(attribute.attr_value().tag(), attribute.as_slice())?;
        let kind = attribute.attr_type();
        if *kind == OID_X509_COMMON_NAME {
            subject.common_name = Some(value);
        } else if *kind == OID_X509_ORGANIZATION_NAME {
            subject.organizations.push(value);
        }
    }
    Ok(subject)
}

/// Go's `parseASN1String`.
fn go_string(tag: Tag, bytes: &[u8]) -> Result<String, CertificateError> {
    let ascii = |valid: fn(u8) -> bool, what: &'static str| {
        if bytes.iter().all(|&b| valid(b)) {
            // Every accepted byte is ASCII, hence UTF-8.
            Ok(String::from_utf8_lossy(bytes).into_owned())
        } else {
            Err(CertificateError::Attribute(what))
        }
    };
    match tag {
        // T.61 is read as Latin-1, as Go and BoringSSL do.
        Tag::T61String => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::PrintableString => ascii(is_printable, "invalid PrintableString"),
        Tag::Utf8String => std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| CertificateError::Attribute("invalid UTF-8 string")),
        Tag::Ia5String => ascii(|b| b.is_ascii(), "invalid IA5String"),
        Tag::NumericString => ascii(|b| b.is_ascii_digit() || b == b' ', "invalid NumericString"),
        Tag::BmpString => bmp_string(bytes),
        _ => Err(CertificateError::Attribute("unsupported string type")),
    }
}

/// Go's `isPrintable`: PrintableString's alphabet, plus `*` and `&`, which Go tolerates because
/// real certificates use them.
fn is_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// UCS-2 big endian: an optional trailing NUL is dropped, surrogates and the permanent
/// noncharacters are refused (Go's and BoringSSL's reading).
fn bmp_string(bytes: &[u8]) -> Result<String, CertificateError> {
    let invalid = CertificateError::Attribute("invalid BMPString");
    if !bytes.len().is_multiple_of(2) {
        return Err(invalid);
    }
    let bytes = bytes.strip_suffix(&[0, 0]).unwrap_or(bytes);
    bytes
        .chunks_exact(2)
        .map(|pair| {
            let unit = u16::from_be_bytes([pair[0], pair[1]]);
            let refused = matches!(unit, 0xfffe | 0xffff | 0xfdd0..=0xfdef | 0xd800..=0xdfff);
            // Without surrogates, every unit is one scalar value.
            (!refused)
                .then(|| char::from_u32(u32::from(unit)))
                .flatten()
                .ok_or_else(|| invalid.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn certificate(entries: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in entries {
            params.distinguished_name.push(kind.clone(), value.clone());
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A DER `Name` from (OID bytes, string tag, value bytes), one RDN each.
    fn name(attributes: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut rdns = Vec::new();
        for (oid, tag, value) in attributes {
            let mut sequence = vec![0x06, oid.len() as u8];
            sequence.extend_from_slice(oid);
            sequence.extend([*tag, value.len() as u8]);
            sequence.extend_from_slice(value);
            rdns.extend([0x31, sequence.len() as u8 + 2, 0x30, sequence.len() as u8]);
            rdns.extend(sequence);
        }
        let mut der = vec![0x30, rdns.len() as u8];
        der.extend(rdns);
        der
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const C: &[u8] = &[0x55, 0x04, 0x06];

    fn parse_name(der: &[u8]) -> Result<Subject, CertificateError> {
        let (rest, name) = X509Name::from_der(der).unwrap();
        assert!(rest.is_empty());
        subject(&name)
    }

    #[test]
    fn common_name_is_the_user_and_organizations_are_the_groups() {
        let der = certificate(&[
            (
                DnType::OrganizationName,
                DnValue::Utf8String("team-a".into()),
            ),
            (DnType::CommonName, DnValue::Utf8String("alice".into())),
        ]);
        let facts = read(&der).unwrap();
        assert_eq!(facts.subject.common_name.as_deref(), Some("alice"));
        assert_eq!(facts.subject.organizations, ["team-a"]);
        // rcgen's default validity ends in 4096.
        assert!(facts.not_after > SystemTime::now() + Duration::from_secs(1_000 * 365 * 86_400));
    }

    #[test]
    fn string_types_decode_and_missing_names_are_none() {
        let der = certificate(&[
            (
                DnType::CommonName,
                DnValue::PrintableString("system:node:a".try_into().unwrap()),
            ),
            (
                DnType::OrganizationName,
                DnValue::BmpString("grüppe".try_into().unwrap()),
            ),
        ]);
        let parsed = read(&der).unwrap().subject;
        assert_eq!(parsed.common_name.as_deref(), Some("system:node:a"));
        assert_eq!(parsed.organizations, ["grüppe"]);

        let none = certificate(&[(DnType::CountryName, DnValue::Utf8String("DE".into()))]);
        assert_eq!(read(&none).unwrap().subject, Subject::default());
    }

    #[test]
    fn several_organizations_keep_their_order_and_the_last_common_name_wins() {
        let der = name(&[
            (O, 0x0c, b"a"),
            (CN, 0x0c, b"first"),
            (O, 0x13, b"b"),
            (CN, 0x16, b"last"),
        ]);
        let subject = parse_name(&der).unwrap();
        assert_eq!(subject.organizations, ["a", "b"]);
        assert_eq!(subject.common_name.as_deref(), Some("last"));
    }

    #[test]
    fn values_are_read_as_go_reads_them() {
        // T61String as Latin-1; NumericString digits and spaces; BMPString with its NUL.
        let subject = parse_name(&name(&[
            (CN, 0x14, b"caf\xe9"),
            (O, 0x12, b"12 34"),
            (O, 0x1e, &[0x00, 0x61, 0x00, 0x00]),
        ]))
        .unwrap();
        assert_eq!(subject.common_name.as_deref(), Some("café"));
        assert_eq!(subject.organizations, ["12 34", "a"]);
        // Go's PrintableString tolerates '*' and '&'.
        let subject = parse_name(&name(&[(CN, 0x13, b"a*b&c")])).unwrap();
        assert_eq!(subject.common_name.as_deref(), Some("a*b&c"));

        // What Go refuses fails the whole subject, whichever attribute it is in.
        for bad in [
            name(&[(CN, 0x13, b"under_score")]),
            name(&[(CN, 0x0c, b"\xff\xfe")]),
            name(&[(CN, 0x16, b"\xe9")]),
            name(&[(O, 0x12, b"12a")]),
            name(&[(O, 0x1e, &[0xd8, 0x00])]),
            name(&[(O, 0x1e, &[0x00])]),
            // UniversalString: Go has no reader for it.
            name(&[(CN, 0x1c, &[0, 0, 0, 0x61])]),
            name(&[(C, 0x1c, &[0, 0, 0, 0x61]), (CN, 0x0c, b"alice")]),
            // Not a string at all.
            name(&[(CN, 0x02, &[0x01])]),
        ] {
            assert!(parse_name(&bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn garbage_and_trailing_data_are_errors_never_panics() {
        let der = certificate(&[(DnType::CommonName, DnValue::Utf8String("alice".into()))]);
        for cut in 0..der.len() {
            assert!(read(&der[..cut]).is_err(), "{cut}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(read(&trailing), Err(CertificateError::TrailingData));
        assert!(read(b"not a certificate").is_err());
    }
}
