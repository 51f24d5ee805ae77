//! Just enough X.509 to read a certificate's validity period (pure DER walking, no I/O).
//!
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity SEQUENCE { notBefore Time, notAfter Time }, … }, … }`, where
//! `Time` is UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).

use std::time::SystemTime;

use aws_smithy_types::date_time::{DateTime, Format};

/// One DER element: tag, contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn time(tag: u8, content: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(content).ok()?;
    let s = s.strip_suffix('Z')?;
    let full = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: u32 = s[..2].parse().ok()?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        (0x18, 14) => s.to_owned(),
        _ => return None,
    };
    if !full.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    );
    SystemTime::try_from(DateTime::from_str(&iso, Format::DateTime).ok()?).ok()
}

/// `(notBefore, notAfter)` of a DER certificate.
///
/// # Errors
/// A short description when the bytes are not a certificate this parser understands.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let bad = |what: &str| format!("not an X.509 certificate ({what})");
    let (tag, cert, _) = element(der).ok_or_else(|| bad("no outer SEQUENCE"))?;
    if tag != 0x30 {
        return Err(bad("no outer SEQUENCE"));
    }
    let (tag, tbs, _) = element(cert).ok_or_else(|| bad("no tbsCertificate"))?;
    if tag != 0x30 {
        return Err(bad("no tbsCertificate"));
    }
    let mut rest = tbs;
    // Optional [0] version, then serial, signature, issuer: skip to the fourth/fifth element.
    let (tag, _, after) = element(rest).ok_or_else(|| bad("truncated"))?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        rest = element(rest).ok_or_else(|| bad("truncated"))?.2;
    }
    let (tag, validity, _) = element(rest).ok_or_else(|| bad("no validity"))?;
    if tag != 0x30 {
        return Err(bad("no validity"));
    }
    let (t1, nb, rest) = element(validity).ok_or_else(|| bad("no notBefore"))?;
    let (t2, na, _) = element(rest).ok_or_else(|| bad("no notAfter"))?;
    let not_before = time(t1, nb).ok_or_else(|| bad("unreadable notBefore"))?;
    let not_after = time(t2, na).ok_or_else(|| bad("unreadable notAfter"))?;
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 0x80 {
            v.push(u8::try_from(content.len()).unwrap());
        } else {
            v.push(0x82);
            v.extend_from_slice(&u16::try_from(content.len()).unwrap().to_be_bytes());
        }
        v.extend_from_slice(content);
        v
    }

    fn cert(not_before: (u8, &str), not_after: (u8, &str), with_version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(0xa0, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(0x30, &tlv(0x06, &[1, 2])));
        tbs.extend(tlv(0x30, &[0u8; 200])); // a long issuer: two-byte length form
        let validity = [
            tlv(not_before.0, not_before.1.as_bytes()),
            tlv(not_after.0, not_after.1.as_bytes()),
        ]
        .concat();
        tbs.extend(tlv(0x30, &validity));
        tlv(0x30, &[tlv(0x30, &tbs), tlv(0x30, &[0x05, 0x00])].concat())
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let (nb, na) = validity(&cert(
            (0x17, "260101000000Z"),
            (0x18, "20491231235959Z"),
            true,
        ))
        .unwrap();
        assert_eq!(
            nb,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
        assert_eq!(
            na,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_607_999)
        );
        let (nb, _) = validity(&cert(
            (0x17, "991231235959Z"),
            (0x17, "000101000000Z"),
            false,
        ))
        .unwrap();
        assert_eq!(
            nb,
            SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_799),
            "YY >= 50 is 19YY"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(validity(b"").is_err());
        assert!(validity(&[0x30, 0x05, 1]).is_err());
        assert!(validity(&cert((0x17, "2601010000Z"), (0x17, "260101000000Z"), true)).is_err());
    }
}
