//! `sqlserver-emulator`: runs the emulated SQL Server of Strata's tests on
//! 127.0.0.1 for manual trials of the SQL Server plugin and for
//! `bench/sqlserver`, until Ctrl-C.
//!
//! ```text
//! sqlserver-emulator [--port 14330] [--user strata] [--password P]
//!                    [--server-name NAME] [--utc-offset MINUTES]
//!                    [--trust-ca FILE.pem]... [--resolve HOST=127.0.0.1:PORT]...
//!                    [--database-size BYTES] [--not-sysadmin]
//!                    [--database NAME=SIZE[:compressible|:random]]...
//!                    [--payload-seed N] [--log-block-lists]
//!                    [--media-out PATH DATABASE full|diff|log|copy-only [--compression]]
//! sqlserver-emulator --media-check PATH
//! ```
//!
//! It prints its address and an ADO.NET connection string (what the
//! plugin's `connection` setting takes).
//!
//! - `--database` creates a database at start whose full backup carries
//!   SIZE bytes of pages (`1GiB`, `512MiB`, `8G` or bytes): table-like pages
//!   that compress (the default) or random bytes.
//! - `--payload-seed` generates every backup's pages from one seed, so that
//!   two backups of a database carry the same bytes.
//! - `--log-block-lists` writes a line per Put Block List to standard
//!   error with its wall-clock times (`put-block-list sent=... answered=...`).
//! - `--media-out` writes, instead of serving, the media a `BACKUP` of
//!   DATABASE would write (to one device, `WITH CHECKSUM` and, with
//!   `--compression`, `COMPRESSION`) to PATH (a file, a FIFO, or `-` for
//!   standard output), then exits.
//! - `--media-check` reads media from PATH (`-`: standard input) as
//!   `RESTORE` would, checks every page and the checksum trailer, and exits
//!   0 when they are intact, 1 with SQL Server's error otherwise.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use strata_e2e::sqlserver::media::{self, MAX_TRANSFER_SIZE, MediaError};
use strata_e2e::sqlserver::tds::Reply;
use strata_e2e::sqlserver::{Emulator, EmulatorConfig};
use tokio::io::{AsyncRead, AsyncReadExt};

const USAGE: &str = "usage: sqlserver-emulator [--port N] [--user NAME] [--password P] [--server-name NAME] \
[--utc-offset MINUTES] [--trust-ca FILE.pem]... [--resolve HOST=127.0.0.1:PORT]... [--database-size BYTES] [--not-sysadmin] \
[--database NAME=SIZE[:compressible|:random]]... [--payload-seed N] [--log-block-lists] \
[--media-out PATH DATABASE full|diff|log|copy-only [--compression]]
       sqlserver-emulator --media-check PATH";

/// A database created at start.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DatabaseSpec {
    name: String,
    /// The bytes of pages a full backup carries.
    size: u64,
    /// Table-like pages (they compress about 2.5x) or random bytes.
    compressible: bool,
}

/// `--media-out PATH DATABASE KIND`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MediaOut {
    path: PathBuf,
    database: String,
    kind: String,
}

/// What the command line asks for.
#[derive(Debug)]
struct Options {
    config: EmulatorConfig,
    databases: Vec<DatabaseSpec>,
    media_out: Option<MediaOut>,
    /// `--compression`: the `--media-out` backup is `WITH COMPRESSION`.
    compression: bool,
    media_check: Option<PathBuf>,
}

/// Reads the command line; `Err` holds the message for the user.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        config: EmulatorConfig {
            port: 14330,
            ..EmulatorConfig::default()
        },
        databases: Vec::new(),
        media_out: None,
        compression: false,
        media_check: None,
    };
    let config = &mut options.config;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--not-sysadmin" => {
                config.sysadmin = false;
                continue;
            }
            "--log-block-lists" => {
                config.log_block_lists = true;
                continue;
            }
            "--compression" => {
                options.compression = true;
                continue;
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            _ => {}
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| format!("{flag} takes {what}, not '{value}'");
        match flag.as_str() {
            "--port" => config.port = value.parse().map_err(|_| number("a port number"))?,
            "--user" => config.user = value,
            "--password" => config.password = value,
            "--server-name" => config.server_name = value,
            "--utc-offset" => {
                config.utc_offset_minutes =
                    value.parse().map_err(|_| number("minutes east of UTC"))?
            }
            "--database-size" => {
                config.database_size = value.parse().map_err(|_| number("a size in bytes"))?
            }
            "--payload-seed" => {
                config.payload_seed = Some(value.parse().map_err(|_| number("a number"))?)
            }
            "--trust-ca" => {
                let pem = std::fs::read(&value)
                    .map_err(|e| format!("cannot read the CA certificate {value}: {e}"))?;
                config.trusted_ca_pem.push(pem);
            }
            "--resolve" => {
                let (host, addr) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--resolve takes HOST=127.0.0.1:PORT, not '{value}'"))?;
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|_| format!("--resolve takes HOST=127.0.0.1:PORT, not '{value}'"))?;
                config.resolve.push((host.to_string(), addr));
            }
            "--database" => options.databases.push(parse_database(&value)?),
            "--media-out" => {
                let database = args.next();
                let kind = args.next();
                let (Some(database), Some(kind)) = (database, kind) else {
                    return Err(format!("--media-out takes PATH DATABASE KIND\n{USAGE}"));
                };
                if !["full", "diff", "log", "copy-only"].contains(&kind.as_str()) {
                    return Err(format!(
                        "--media-out's KIND is full, diff, log or copy-only, not '{kind}'"
                    ));
                }
                options.media_out = Some(MediaOut {
                    path: PathBuf::from(value),
                    database,
                    kind,
                });
            }
            "--media-check" => options.media_check = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if options.media_out.is_some() {
        // Nothing connects: do not hold a fixed port.
        options.config.port = 0;
    }
    Ok(options)
}

/// `NAME=SIZE[:compressible|:random]`.
fn parse_database(value: &str) -> Result<DatabaseSpec, String> {
    let wrong = || format!("--database takes NAME=SIZE[:compressible|:random], not '{value}'");
    let (name, rest) = value.split_once('=').ok_or_else(wrong)?;
    let (size, pages) = rest.split_once(':').unwrap_or((rest, "compressible"));
    let compressible = match pages {
        "compressible" => true,
        "random" => false,
        _ => return Err(wrong()),
    };
    if name.is_empty() {
        return Err(wrong());
    }
    Ok(DatabaseSpec {
        name: name.to_string(),
        size: parse_size(size).ok_or_else(wrong)?,
        compressible,
    })
}

/// A size in bytes, or with a binary unit: `K`, `M`, `G`, `T`, optionally
/// followed by `iB` or `B` (`8G`, `512MiB`).
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| !c.is_ascii_digit());
    let unit = &text[digits.len()..];
    let shift = match unit.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The `BACKUP` statement `--media-out` prepares: the options the plugin
/// sends, to one `DISK` device named after PATH.
fn media_out_statement(out: &MediaOut, compression: bool) -> String {
    let database = out.database.replace(']', "]]");
    let device = out.path.display().to_string().replace('\'', "''");
    let (target, kind_options) = match out.kind.as_str() {
        "diff" => ("DATABASE", "DIFFERENTIAL, "),
        "log" => ("LOG", ""),
        "copy-only" => ("DATABASE", "COPY_ONLY, "),
        _ => ("DATABASE", ""),
    };
    let compression = if compression {
        "COMPRESSION"
    } else {
        "NO_COMPRESSION"
    };
    format!(
        "BACKUP {target} [{database}] TO DISK = N'{device}' WITH {kind_options}FORMAT, CHECKSUM, \
         {compression}, MAXTRANSFERSIZE = {MAX_TRANSFER_SIZE}, BLOCKSIZE = 65536"
    )
}

/// Creates the databases of `--database`.
async fn create_databases(emulator: &Emulator, databases: &[DatabaseSpec]) -> Result<(), String> {
    for spec in databases {
        let sql = format!("CREATE DATABASE [{}]", spec.name.replace(']', "]]"));
        for reply in emulator.sql(&sql).await {
            if let Reply::Error(e) = reply {
                return Err(format!("{sql}: Msg {}: {}", e.number, e.message));
            }
        }
        emulator.set_database_size(&spec.name, spec.size, spec.compressible);
    }
    Ok(())
}

/// Writes the media of `out` to its path; returns the bytes written.
/// Generating the blocks and writing them run on two threads, as SQL
/// Server's reader and writer threads overlap.
async fn write_media(
    emulator: &Emulator,
    out: &MediaOut,
    compression: bool,
) -> Result<u64, String> {
    let sql = media_out_statement(out, compression);
    let blocks = emulator.server().backup_media(&sql).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("Msg {}: {}", e.number, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let path = out.path.clone();
    tokio::task::spawn_blocking(move || {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let generator = std::thread::spawn(move || {
            for block in blocks {
                if sender.send(block).is_err() {
                    break;
                }
            }
        });
        let mut output: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            )
        };
        let mut written = 0u64;
        for block in receiver {
            output
                .write_all(&block)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written += block.len() as u64;
        }
        output
            .flush()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        generator
            .join()
            .map_err(|_| "the media generator panicked".to_string())?;
        Ok(written)
    })
    .await
    .map_err(|e| format!("the media writer failed: {e}"))?
}

/// Reads blocks of [`MAX_TRANSFER_SIZE`] (the last shorter) from `reader`,
/// as `RESTORE` reads a device.
fn device_stream(reader: Box<dyn AsyncRead + Send + Unpin>, name: String) -> media::DeviceStream {
    Box::pin(futures::stream::try_unfold(
        (reader, name),
        |(mut reader, name)| async move {
            let mut block = BytesMut::zeroed(MAX_TRANSFER_SIZE);
            let mut filled = 0;
            while filled < block.len() {
                let n = reader
                    .read(&mut block[filled..])
                    .await
                    .map_err(|e| MediaError {
                        number: 3203,
                        message: format!("Read on \"{name}\" failed: {e}"),
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(None);
            }
            block.truncate(filled);
            Ok(Some((block.freeze(), (reader, name))))
        },
    ))
}

/// `--media-check PATH`: decodes and checks the media; prints what it holds.
async fn check_media(path: PathBuf) -> Result<String, String> {
    let name = path.display().to_string();
    let reader: Box<dyn AsyncRead + Send + Unpin> = if name == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&path).await.map_err(|e| {
            format!("Msg 3201: Cannot open backup device '{name}'. Operating system error {e}.")
        })?)
    };
    let started = Instant::now();
    let decoded = media::decode_named(vec![(name.clone(), device_stream(reader, name))], false)
        .await
        .map_err(|e| format!("Msg {}: {}", e.number, e.message))?;
    Ok(format!(
        "media of database '{}' ({:?}, LSN {} .. {}): {} bytes of pages checked in {:.2} s",
        decoded.header.database_name,
        decoded.header.backup_type,
        decoded.header.first_lsn,
        decoded.header.last_lsn,
        decoded.payload_len,
        started.elapsed().as_secs_f64()
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = options.media_check {
        return match check_media(path).await {
            Ok(summary) => {
                eprintln!("{summary}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        };
    }
    let offset = options.config.utc_offset_minutes;
    let emulator = Emulator::start(options.config).await;
    if let Err(message) = create_databases(&emulator, &options.databases).await {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    if let Some(out) = &options.media_out {
        let started = Instant::now();
        return match write_media(&emulator, out, options.compression).await {
            Ok(written) => {
                eprintln!(
                    "wrote {written} bytes of {} backup media of '{}' to {} in {:.2} s",
                    out.kind,
                    out.database,
                    out.path.display(),
                    started.elapsed().as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        };
    }
    println!("SQL Server emulator listening on {}", emulator.addr());
    println!("connection string: {}", emulator.connection_string());
    for spec in &options.databases {
        println!(
            "database {}: {} bytes of {} pages",
            spec.name,
            spec.size,
            if spec.compressible {
                "compressible"
            } else {
                "random"
            }
        );
    }
    println!("server local time is UTC{offset:+} minutes; Ctrl-C stops it");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options_fill_the_configuration() {
        let options = parse_args(args(
            "--port 15000 --user sa --utc-offset -300 --resolve strata-blob.local=127.0.0.1:8443 --not-sysadmin \
             --database sales=1GiB --database blobs=512M:random --payload-seed 7 --log-block-lists",
        ))
        .unwrap();
        let config = &options.config;
        assert_eq!(config.port, 15000);
        assert_eq!(config.user, "sa");
        assert_eq!(config.utc_offset_minutes, -300);
        assert_eq!(
            config.resolve,
            vec![(
                "strata-blob.local".to_string(),
                "127.0.0.1:8443".parse().unwrap()
            )]
        );
        assert!(!config.sysadmin);
        assert_eq!(config.payload_seed, Some(7));
        assert!(config.log_block_lists);
        assert_eq!(
            options.databases,
            vec![
                DatabaseSpec {
                    name: "sales".into(),
                    size: 1 << 30,
                    compressible: true
                },
                DatabaseSpec {
                    name: "blobs".into(),
                    size: 512 << 20,
                    compressible: false
                },
            ]
        );
        assert!(options.media_out.is_none());
    }

    #[test]
    fn media_out_takes_a_path_a_database_and_a_kind() {
        let options = parse_args(args(
            "--media-out /dev/null sales full --compression --port 1",
        ))
        .unwrap();
        let out = options.media_out.unwrap();
        assert_eq!(out.path, PathBuf::from("/dev/null"));
        assert_eq!(out.database, "sales");
        assert_eq!(
            media_out_statement(&out, options.compression),
            "BACKUP DATABASE [sales] TO DISK = N'/dev/null' WITH FORMAT, CHECKSUM, COMPRESSION, \
             MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536"
        );
        assert_eq!(options.config.port, 0, "writing media binds no fixed port");
        assert!(
            parse_args(args("--media-out /dev/null sales"))
                .unwrap_err()
                .contains("PATH DATABASE KIND")
        );
        assert!(
            parse_args(args("--media-out /dev/null sales weekly"))
                .unwrap_err()
                .contains("not 'weekly'")
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("1X"), None);
        assert_eq!(parse_size("G"), None);
        assert!(
            parse_database("sales=1G:zipped")
                .unwrap_err()
                .contains("NAME=SIZE")
        );
        assert!(parse_database("=1G").is_err());
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        assert_eq!(
            parse_args(args("--port x")).unwrap_err(),
            "--port takes a port number, not 'x'"
        );
        assert!(
            parse_args(args("--resolve nohost"))
                .unwrap_err()
                .contains("HOST=127.0.0.1:PORT")
        );
        assert!(
            parse_args(args("--bogus 1"))
                .unwrap_err()
                .starts_with("unknown option --bogus")
        );
        assert!(
            parse_args(args("--trust-ca /nonexistent/ca.pem"))
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
    }

    /// The media `--media-out` writes is what `--media-check` accepts, and
    /// a damaged byte is found: the baseline path of `bench/sqlserver`
    /// carries intact media.
    #[tokio::test]
    async fn media_out_writes_media_that_checks_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sales.bak");
        let emulator = Emulator::start(EmulatorConfig {
            payload_seed: Some(3),
            ..EmulatorConfig::default()
        })
        .await;
        let spec = parse_database("sales=9M").unwrap();
        create_databases(&emulator, std::slice::from_ref(&spec))
            .await
            .unwrap();
        let out = MediaOut {
            path: path.clone(),
            database: "sales".into(),
            kind: "full".into(),
        };
        let written = write_media(&emulator, &out, false).await.unwrap();
        assert_eq!(written, std::fs::metadata(&path).unwrap().len());
        assert!(written > 9 << 20, "{written}");
        let summary = check_media(path.clone()).await.unwrap();
        assert!(
            summary.contains("database 'sales'") && summary.contains(&format!("{}", 9 << 20)),
            "{summary}"
        );

        // Same seed, same pages: a second full differs only in its header.
        let again = dir.path().join("again.bak");
        let out = MediaOut {
            path: again.clone(),
            ..out
        };
        write_media(&emulator, &out, false).await.unwrap();
        let (first, second) = (
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap(),
        );
        let tail = 9 << 20;
        let payload = |m: &[u8]| m[m.len() - 48 - tail..m.len() - 48].to_vec();
        assert!(payload(&first) == payload(&second), "the pages differ");

        let mut damaged = first;
        let at = damaged.len() - 48 - 4096;
        damaged[at] ^= 1;
        std::fs::write(&path, damaged).unwrap();
        let err = check_media(path).await.unwrap_err();
        assert!(
            err.starts_with("Msg 3183") || err.starts_with("Msg 3189"),
            "{err}"
        );

        let missing = write_media(
            &emulator,
            &MediaOut {
                path: dir.path().join("x.bak"),
                database: "nosuch".into(),
                kind: "full".into(),
            },
            false,
        )
        .await
        .unwrap_err();
        assert!(
            missing.contains("Msg 911") && missing.contains("nosuch"),
            "{missing}"
        );
    }
}
