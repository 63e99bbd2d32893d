//! SQL Server log sequence numbers (LSNs) as Strata [`Position`]s.
//!
//! SQL Server shows an LSN in two notations:
//!
//! - the catalog's `numeric(25,0)` decimal (`msdb.dbo.backupset.first_lsn`,
//!   `RESTORE HEADERONLY`'s `FirstLSN`, `STOPATMARK = 'lsn:<decimal>'`), for
//!   example `34000000012300001`. This is the notation Strata stores and shows;
//! - the hexadecimal triple `VVVVVVVV:BBBBBBBB:SSSS` (virtual log file
//!   sequence number : log block : slot) of `fn_dblog` and
//!   `sys.dm_db_log_stats`, for example `00000022:0000007b:0001`.
//!
//! The two are related by `decimal = VLF × 10^15 + block × 10^5 + slot`: the
//! decimal is the VLF number without padding, the block zero-padded to ten
//! digits and the slot to five (Paul Randal's conversion, as the community
//! documents it for `fn_dblog` output). LSNs are compared numerically; the
//! engine gives arithmetic on them no meaning ("Log sequence numbers (LSNs)"
//! in the SQL Server transaction log architecture guide), so neither does
//! this module.

use strata_core::catalog::manifest::Position;
use strata_core::{Error, Result};

/// The largest value of `numeric(25,0)`: 25 nines.
const MAX_DECIMAL: u128 = 9_999_999_999_999_999_999_999_999;
/// Weight of the VLF sequence number in the decimal form.
const VLF_WEIGHT: u128 = 1_000_000_000_000_000;
/// Weight of the log block number in the decimal form.
const BLOCK_WEIGHT: u128 = 100_000;

/// Parses the decimal `numeric(25,0)` form (`34000000012300001`): ASCII
/// digits only, at most 25 of them, surrounding spaces ignored.
///
/// Errors ([`ErrorKind::Config`](strata_core::ErrorKind::Config)) name the
/// text; the caller adds where it came from.
pub fn parse_decimal(text: &str) -> Result<Position> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::config(format!(
            "`{text}` is not an LSN: expected the decimal numeric(25,0) form, such as 34000000012300001"
        )));
    }
    let value = digits
        .parse::<u128>()
        .ok()
        .filter(|v| *v <= MAX_DECIMAL)
        .ok_or_else(|| {
            Error::config(format!(
                "`{text}` is not an LSN: it has more than the 25 digits of numeric(25,0)"
            ))
        })?;
    Ok(Position(value))
}

/// Parses the hexadecimal form `VVVVVVVV:BBBBBBBB:SSSS` of `fn_dblog` and
/// `sys.dm_db_log_stats` (each part 1 to 8, 8 and 4 hex digits, any case;
/// an optional `0x` before the first part is accepted).
///
/// Errors ([`ErrorKind::Config`](strata_core::ErrorKind::Config)) name the
/// text and the part that is wrong.
pub fn parse_hex(text: &str) -> Result<Position> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let parts: Vec<&str> = body.split(':').collect();
    let bad = |why: &str| {
        Error::config(format!(
            "`{text}` is not an LSN: {why} (expected VVVVVVVV:BBBBBBBB:SSSS, such as 00000022:0000007b:0001)"
        ))
    };
    let [vlf, block, slot] = parts.as_slice() else {
        return Err(bad("it does not have three parts separated by `:`"));
    };
    let part = |name: &str, digits: &str, max_len: usize| -> Result<u128> {
        if digits.is_empty()
            || digits.len() > max_len
            || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad(&format!(
                "its {name} part `{digits}` is not 1 to {max_len} hex digits"
            )));
        }
        u128::from_str_radix(digits, 16).map_err(|_| bad(&format!("its {name} part `{digits}`")))
    };
    let vlf = part("VLF", vlf, 8)?;
    let block = part("block", block, 8)?;
    let slot = part("slot", slot, 4)?;
    Ok(Position(vlf * VLF_WEIGHT + block * BLOCK_WEIGHT + slot))
}

/// Parses either form: the hexadecimal triple when `text` contains a `:`,
/// the decimal otherwise.
pub fn parse(text: &str) -> Result<Position> {
    if text.contains(':') {
        parse_hex(text)
    } else {
        parse_decimal(text)
    }
}

/// The hexadecimal form `VVVVVVVV:BBBBBBBB:SSSS` (lowercase, zero-padded, as
/// `fn_dblog` shows it) of `lsn`, or `None` when the decimal does not
/// decompose into a 32-bit VLF number, a 32-bit block and a 16-bit slot
/// (no LSN SQL Server wrote looks like that).
pub fn to_hex(lsn: Position) -> Option<String> {
    let value = lsn.0;
    let vlf = u32::try_from(value / VLF_WEIGHT).ok()?;
    let block = u32::try_from((value % VLF_WEIGHT) / BLOCK_WEIGHT).ok()?;
    let slot = u16::try_from(value % BLOCK_WEIGHT).ok()?;
    Some(format!("{vlf:08x}:{block:08x}:{slot:04x}"))
}

/// `lsn` for an operator: the decimal form, as SQL Server's catalog views
/// and `RESTORE HEADERONLY` show it.
pub fn text(lsn: Position) -> String {
    lsn.0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keeps_all_25_digits() {
        let p = parse_decimal("9999999999999999999999999").unwrap();
        assert_eq!(p, Position(9_999_999_999_999_999_999_999_999));
        assert_eq!(
            parse_decimal(" 34000000012300001 ").unwrap(),
            Position(34_000_000_012_300_001)
        );
        assert_eq!(text(p), "9999999999999999999999999");
    }

    #[test]
    fn decimal_refuses_what_is_not_numeric_25_0() {
        for bad in ["", "12a", "-5", "1.5e16", "10000000000000000000000000"] {
            let err = parse_decimal(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn hex_converts_to_the_catalog_decimal() {
        // 0x22 = 34, 0x7b = 123, slot 1: 34 | 0000000123 | 00001.
        assert_eq!(
            parse_hex("00000022:0000007b:0001").unwrap(),
            Position(34_000_000_012_300_001)
        );
        assert_eq!(
            parse("0x00000022:0000007B:0001").unwrap(),
            Position(34_000_000_012_300_001)
        );
        assert_eq!(
            parse_hex("ffffffff:ffffffff:ffff").unwrap(),
            Position(4_294_967_295 * VLF_WEIGHT + 4_294_967_295 * BLOCK_WEIGHT + 65_535)
        );
    }

    #[test]
    fn hex_round_trips_and_names_the_wrong_part() {
        let p = Position(34_000_000_012_300_001);
        assert_eq!(to_hex(p).as_deref(), Some("00000022:0000007b:0001"));
        assert_eq!(parse(&to_hex(p).unwrap()).unwrap(), p);
        // A block beyond 32 bits or a slot beyond 16 bits is no LSN.
        assert_eq!(to_hex(Position(5_000_000_000 * BLOCK_WEIGHT)), None);
        assert_eq!(to_hex(Position(99_999)), None);
        let err = parse_hex("22:7g:1").unwrap_err().to_string();
        assert!(err.contains("block part `7g`"), "{err}");
        let err = parse_hex("22:7b").unwrap_err().to_string();
        assert!(err.contains("three parts"), "{err}");
        let err = parse_hex("22:7b:12345").unwrap_err().to_string();
        assert!(err.contains("slot part `12345`"), "{err}");
    }
}
