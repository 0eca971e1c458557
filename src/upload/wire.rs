//! Reading values in PostgreSQL's binary wire format, carried from the local server to the remote unchanged.
//!
//! Owns: [`Wire`], a value's binary bytes as the local server sent them (`FromSql`) and as the remote receives
//! them (`ToSql`), for exactly one PostgreSQL type each ([`Timestamp`], [`Numeric`], [`Jsonb`]); and the text
//! form of a binary timestamp for messages ([`Wire::<Timestamp>::to_text`]). Nothing here decodes a value on
//! the data path: NUMERIC keeps its digits and scale (and NaN, ±infinity), TIMESTAMP its microseconds (and
//! ±infinity; no time zone is applied anywhere), JSONB its version byte and text. SQL NULL is `Option::None`
//! around a `Wire`; JSON null is a `Wire<Jsonb>` holding `null`. Text columns need no wrapper: their binary
//! form is their UTF-8 bytes, which `String` carries unchanged. Pure.
//!
//! Arrays of these (`timestamp[]`, `numeric[]`, `jsonb[]`) are written by postgres-types' own array encoding
//! (`Vec<T>: ToSql` with the element type taken from the array type), NULL elements included.

use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// The PostgreSQL type whose binary form a [`Wire`] carries.
pub trait WireType {
    /// The only type accepted, on both sides.
    const TYPE: Type;
}

/// `timestamp` (without time zone): 8 bytes, microseconds since 2000-01-01, `i64::MAX`/`MIN` for ±infinity.
#[derive(Debug)]
pub enum Timestamp {}

/// `numeric`: digit count, weight, sign (or NaN / ±infinity), display scale, base-10000 digits.
#[derive(Debug)]
pub enum Numeric {}

/// `jsonb`: a version byte (1) and the value's text.
#[derive(Debug)]
pub enum Jsonb {}

impl WireType for Timestamp {
    const TYPE: Type = Type::TIMESTAMP;
}

impl WireType for Numeric {
    const TYPE: Type = Type::NUMERIC;
}

impl WireType for Jsonb {
    const TYPE: Type = Type::JSONB;
}

/// One non-NULL value of type `K` in PostgreSQL's binary format, exactly as a server sent it.
pub struct Wire<K: WireType> {
    bytes: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K: WireType> Wire<K> {
    /// A value from its binary form (tests and benches build values so; the data path reads them from rows).
    pub fn from_bytes(bytes: impl Into<Box<[u8]>>) -> Wire<K> {
        Wire {
            bytes: bytes.into(),
            kind: PhantomData,
        }
    }

    /// The binary form.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Microseconds since 2000-01-01 00:00:00 (PostgreSQL's epoch) that mean `infinity` and `-infinity`.
const TS_INFINITY: i64 = i64::MAX;
const TS_MINUS_INFINITY: i64 = i64::MIN;

impl Wire<Timestamp> {
    /// A timestamp of `micros` microseconds after 2000-01-01 00:00:00.
    pub fn from_micros(micros: i64) -> Wire<Timestamp> {
        Wire::from_bytes(micros.to_be_bytes().to_vec())
    }

    /// The microseconds after 2000-01-01 00:00:00; None if the bytes are not 8 long.
    pub fn micros(&self) -> Option<i64> {
        Some(i64::from_be_bytes(self.bytes.as_ref().try_into().ok()?))
    }

    /// The value as PostgreSQL prints it under DateStyle ISO: `2024-01-02 03:04:05.123456` (trailing zeros of
    /// the fraction dropped), `0044-03-15 00:00:00 BC`, `infinity`, `-infinity`. For messages only.
    pub fn to_text(&self) -> String {
        match self.micros() {
            None => format!("<timestamp of {} bytes>", self.bytes.len()),
            Some(TS_INFINITY) => "infinity".to_string(),
            Some(TS_MINUS_INFINITY) => "-infinity".to_string(),
            Some(us) => timestamp_text(us),
        }
    }
}

/// PostgreSQL's ISO text of a finite timestamp (proleptic Gregorian calendar, as PostgreSQL's).
fn timestamp_text(us: i64) -> String {
    const DAY_US: i64 = 86_400_000_000;
    // Days from 1970-01-01 to 2000-01-01.
    const EPOCH_2000: i64 = 10_957;
    let days = us.div_euclid(DAY_US) + EPOCH_2000;
    let in_day = us.rem_euclid(DAY_US);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Year 0 is 1 BC, -1 is 2 BC.
    let (year, era) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
    let mut out = format!("{year:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}");
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push_str(era);
    out
}

/// (year, month, day) of `z` days after 1970-01-01 (H. Hinnant's algorithm; year 0 is 1 BC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl<'a, K: WireType> FromSql<'a> for Wire<K> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Wire<K>, BoxError> {
        Ok(Wire::from_bytes(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == K::TYPE
    }
}

impl<K: WireType> ToSql for Wire<K> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        // Array elements are written without the check `to_sql_checked` makes: make it here.
        if *ty != K::TYPE {
            return Err(format!("a {} value cannot be sent as {ty}", K::TYPE).into());
        }
        out.extend_from_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == K::TYPE
    }

    to_sql_checked!();
}

impl<K: WireType> Clone for Wire<K> {
    fn clone(&self) -> Wire<K> {
        Wire::from_bytes(self.bytes.clone())
    }
}

impl<K: WireType> PartialEq for Wire<K> {
    fn eq(&self, other: &Wire<K>) -> bool {
        self.bytes == other.bytes
    }
}

impl<K: WireType> Eq for Wire<K> {}

/// The type and the size only: a value (a megabyte of metadata) never reaches a log whole.
impl<K: WireType> fmt::Debug for Wire<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wire<{}>({} bytes)", K::TYPE, self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;
    const DAY: i64 = 86_400 * SEC;

    fn text(us: i64) -> String {
        Wire::<Timestamp>::from_micros(us).to_text()
    }

    #[test]
    fn timestamps_print_as_postgresql_prints_them() {
        assert_eq!(text(0), "2000-01-01 00:00:00");
        assert_eq!(text(-1), "1999-12-31 23:59:59.999999");
        assert_eq!(text(SEC / 2), "2000-01-01 00:00:00.5");
        assert_eq!(text(123_456), "2000-01-01 00:00:00.123456");
        // 2024-02-29 12:34:56.0001 (a leap day).
        assert_eq!(text(8825 * DAY + 45_296 * SEC + 100), "2024-02-29 12:34:56.0001");
        assert_eq!(text(-730_119 * DAY), "0001-01-01 00:00:00");
        assert_eq!(text(-730_120 * DAY), "0001-12-31 00:00:00 BC");
        // 44 BC is astronomical year -43; 4713 BC is the earliest PostgreSQL accepts.
        assert_eq!(text(-746_117 * DAY), "0044-03-15 00:00:00 BC");
        assert_eq!(text(-2_451_545 * DAY), "4714-11-24 00:00:00 BC");
        assert_eq!(text(2_921_940 * DAY), "10000-01-01 00:00:00");
        assert_eq!(text(i64::MAX), "infinity");
        assert_eq!(text(i64::MIN), "-infinity");
        assert_eq!(
            Wire::<Timestamp>::from_bytes(vec![1, 2]).to_text(),
            "<timestamp of 2 bytes>"
        );
    }

    #[test]
    fn a_value_is_accepted_as_exactly_its_own_type() {
        assert!(<Wire<Numeric> as ToSql>::accepts(&Type::NUMERIC));
        assert!(!<Wire<Numeric> as ToSql>::accepts(&Type::TEXT));
        assert!(!<Wire<Timestamp> as FromSql>::accepts(&Type::TIMESTAMPTZ));
        assert!(<Wire<Jsonb> as FromSql>::accepts(&Type::JSONB));
        assert!(!<Wire<Jsonb> as FromSql>::accepts(&Type::JSON));
        assert!(<Vec<Option<&Wire<Jsonb>>> as ToSql>::accepts(&Type::JSONB_ARRAY));
        assert!(!<Vec<&Wire<Numeric>> as ToSql>::accepts(&Type::TEXT_ARRAY));
        let mut out = BytesMut::new();
        let v = Wire::<Numeric>::from_bytes(vec![0, 0, 0, 0, 0xC0, 0, 0, 0]);
        assert!(v.to_sql(&Type::TEXT, &mut out).is_err());
        assert!(matches!(v.to_sql(&Type::NUMERIC, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], v.bytes());
    }

    #[test]
    fn arrays_carry_the_elements_unchanged_with_nulls() {
        let a = Wire::<Jsonb>::from_bytes(b"\x01null".to_vec());
        let b = Wire::<Jsonb>::from_bytes(b"\x01{\"k\": 1}".to_vec());
        let values = vec![Some(&a), None, Some(&b)];
        let mut out = BytesMut::new();
        assert!(values.to_sql_checked(&Type::JSONB_ARRAY, &mut out).is_ok());
        let mut expected = Vec::new();
        for word in [1i32, 1, Type::JSONB.oid() as i32, 3, 1] {
            expected.extend_from_slice(&word.to_be_bytes());
        }
        expected.extend_from_slice(&5i32.to_be_bytes());
        expected.extend_from_slice(a.bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&9i32.to_be_bytes());
        expected.extend_from_slice(b.bytes());
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(format!("{b:?}"), "Wire<jsonb>(9 bytes)");
    }
}
