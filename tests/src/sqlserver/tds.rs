//! The emulator's TDS server: the part of SQL Server's wire protocol
//! ([MS-TDS] "Tabular Data Stream Protocol", version 7.4) that a client such
//! as tiberius uses for a SQL login and SQL batches.
//!
//! [`serve`] accepts connections on a listener and serves each on its own
//! task, so a slow batch on one connection never delays another:
//!
//! 1. PRELOGIN: the server answers ENCRYPTION = NOT_SUP, so the client must
//!    use `EncryptionLevel::NotSupported` (no TLS; the emulator listens on
//!    loopback only).
//! 2. LOGIN7: the user name and password are checked against one [`Login`];
//!    anything else is error 18456 "Login failed for user '...'." and the
//!    connection is closed, as SQL Server does.
//! 3. SQL batches: the UTF-16 text is handed to a [`BatchHandler`], whose
//!    [`Reply`]s are sent as the token stream SQL Server sends for them
//!    (COLMETADATA/ROW/DONE, INFO, ERROR), split into packets of the
//!    negotiated size. An Attention cancels the running batch (its future is
//!    dropped) and is acknowledged with DONE_ATTN. RPC requests are refused:
//!    the emulator takes SQL batches only.
//!
//! The T-SQL itself is the handler's business; this module knows nothing of
//! databases or backups.
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use strata_e2e::sqlserver::tds::{serve, BatchHandler, Column, Login, Reply, Session, SqlType, Value};
//!
//! struct Spid;
//!
//! #[async_trait]
//! impl BatchHandler for Spid {
//!     async fn batch(&self, session: &Session, _sql: &str) -> Vec<Reply> {
//!         vec![Reply::Rows {
//!             columns: vec![Column::new("spid", SqlType::SmallInt)],
//!             rows: vec![vec![Value::SmallInt(session.spid as i16)]],
//!         }]
//!     }
//! }
//!
//! # async fn example() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let login = Login { user: "strata".into(), password: "secret".into() };
//! let server = serve(listener, login, Arc::new(Spid));
//! // ... connect a client to `addr` ...
//! drop(server); // stops accepting and closes every connection
//! # Ok(())
//! # }
//! ```
//!
//! [MS-TDS]: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-tds/

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use chrono::{NaiveDate, NaiveDateTime, TimeDelta, Timelike};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------
// The model a handler works with
// ---------------------------------------------------------------------------

/// The SQL types of the emulator's result sets, each sent as SQL Server
/// sends that type (MS-TDS 2.2.5.4 "Data Type Definitions"); every column is
/// nullable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    /// `int` (INTN of 4 bytes); tiberius reads `i32`.
    Int,
    /// `bigint` (INTN of 8 bytes); tiberius reads `i64`.
    BigInt,
    /// `smallint` (INTN of 2 bytes); tiberius reads `i16`.
    SmallInt,
    /// `tinyint` (INTN of 1 byte, unsigned); tiberius reads `u8`.
    TinyInt,
    /// `bit` (BITN); tiberius reads `bool`.
    Bit,
    /// `nvarchar`: UTF-16LE, sent as `nvarchar(4000)` (at most 8000 bytes a
    /// value) unless a value of the column is longer, in which case the column
    /// is sent as `nvarchar(max)` (partially length-prefixed, MS-TDS
    /// 2.2.5.2.3). tiberius reads `&str` either way.
    NVarChar,
    /// `numeric(25,0)`, SQL Server's type for LSNs (NUMERICN, 13 bytes: a sign
    /// byte and a 12-byte little-endian magnitude); tiberius reads
    /// `tiberius::numeric::Numeric`, whose `value()` is the `i128`.
    Numeric25,
    /// `uniqueidentifier` (GUIDN, SQL Server's mixed-endian byte order);
    /// tiberius reads `uuid::Uuid`.
    Guid,
    /// `datetime` (DATETIMN of 8 bytes: days since 1900-01-01 and 1/300 s
    /// ticks since midnight); tiberius reads `chrono::NaiveDateTime`. Values
    /// are rounded as SQL Server stores them: see [`round_to_datetime`].
    DateTime,
    /// `datetime2(7)` (DATETIME2N, 100 ns units); tiberius reads
    /// `chrono::NaiveDateTime`.
    DateTime2,
}

impl SqlType {
    /// The type as T-SQL spells it (`numeric(25,0)`, `datetime2(7)`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SqlType::Int => "int",
            SqlType::BigInt => "bigint",
            SqlType::SmallInt => "smallint",
            SqlType::TinyInt => "tinyint",
            SqlType::Bit => "bit",
            SqlType::NVarChar => "nvarchar",
            SqlType::Numeric25 => "numeric(25,0)",
            SqlType::Guid => "uniqueidentifier",
            SqlType::DateTime => "datetime",
            SqlType::DateTime2 => "datetime2(7)",
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value of a result set. A value must be of its column's [`SqlType`]
/// (or `Null`); a row that breaks this is answered with an error instead of
/// rows (see [`Reply::Rows`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL, allowed in every column; tiberius reads `None`.
    Null,
    /// An `int`.
    Int(i32),
    /// A `bigint`.
    BigInt(i64),
    /// A `smallint`.
    SmallInt(i16),
    /// A `tinyint`.
    TinyInt(u8),
    /// A `bit`.
    Bit(bool),
    /// An `nvarchar`.
    NVarChar(String),
    /// A `numeric(25,0)`: at most 25 digits, |value| <= 10^25 - 1.
    Numeric25(i128),
    /// A `uniqueidentifier`.
    Guid(uuid::Uuid),
    /// A `datetime`, years 1753 to 9999; rounded to 1/300 s when sent.
    DateTime(NaiveDateTime),
    /// A `datetime2(7)`, years 1 to 9999; rounded to 100 ns when sent.
    DateTime2(NaiveDateTime),
}

impl Value {
    /// The type of a non-NULL value; `None` for `Null`, which fits any column.
    pub fn sql_type(&self) -> Option<SqlType> {
        Some(match self {
            Value::Null => return None,
            Value::Int(_) => SqlType::Int,
            Value::BigInt(_) => SqlType::BigInt,
            Value::SmallInt(_) => SqlType::SmallInt,
            Value::TinyInt(_) => SqlType::TinyInt,
            Value::Bit(_) => SqlType::Bit,
            Value::NVarChar(_) => SqlType::NVarChar,
            Value::Numeric25(_) => SqlType::Numeric25,
            Value::Guid(_) => SqlType::Guid,
            Value::DateTime(_) => SqlType::DateTime,
            Value::DateTime2(_) => SqlType::DateTime2,
        })
    }
}

/// A column of a result set: its name (at most 128 characters, a `sysname`;
/// longer names are cut) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column name the client sees (`AS name`).
    pub name: String,
    /// The column's type.
    pub ty: SqlType,
}

impl Column {
    /// A column named `name` of type `ty`.
    pub fn new(name: impl Into<String>, ty: SqlType) -> Self {
        Self {
            name: name.into(),
            ty,
        }
    }
}

/// An error SQL Server raises: sent as an ERROR token (MS-TDS 2.2.7.10);
/// tiberius surfaces the first one of a batch as
/// `tiberius::error::Error::Server` with this number (`code()`), state, class
/// and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// The message number (`sys.messages.message_id`, e.g. 3201; 50000 for
    /// messages that have none).
    pub number: u32,
    /// The state (which place raised the error; 1 for most).
    pub state: u8,
    /// The severity class: 11-16 are errors the user can correct, 14 a
    /// permission or login failure.
    pub class: u8,
    /// The message text (at most 2047 characters, as `sys.messages`; longer
    /// texts are cut).
    pub message: String,
}

impl SqlError {
    /// An error of `number` and `class` with state 1.
    pub fn new(number: u32, class: u8, message: impl Into<String>) -> Self {
        Self {
            number,
            state: 1,
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for SqlError {
    /// As SQL Server's tools print it: `Msg 3201, Level 16, State 1: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Msg {}, Level {}, State {}: {}",
            self.number, self.class, self.state, self.message
        )
    }
}

impl std::error::Error for SqlError {}

/// What a batch sends back, in order. Each statement's outcome ends with a
/// DONE token (DONE_MORE on all but the last of the batch):
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A result set: COLMETADATA, one ROW per row, then DONE with DONE_COUNT
    /// and the number of rows. Each row has one value per column, each of the
    /// column's type or `Null`; otherwise the result set is replaced by error
    /// 50000 naming the column and row (the emulator's handler has a bug).
    Rows {
        /// The columns, in order.
        columns: Vec<Column>,
        /// The rows, each with one value per column.
        rows: Vec<Vec<Value>>,
    },
    /// A statement without a result set (CREATE, INSERT, BACKUP): DONE, with
    /// DONE_COUNT when `rows_affected` is given.
    Done {
        /// The "(n rows affected)" count, if the statement has one.
        rows_affected: Option<u64>,
    },
    /// An informational message (INFO token, class 0: `STATS` progress,
    /// "BACKUP DATABASE successfully processed ..."). tiberius does not
    /// surface these to its caller; they go to its DEBUG log.
    Info {
        /// The message number (e.g. 3211, 3014).
        number: u32,
        /// The message text.
        message: String,
    },
    /// An error: consecutive errors form one failed statement, ended by a
    /// DONE with DONE_ERROR (BACKUP: the cause, then 3013 "BACKUP DATABASE is
    /// terminating abnormally."). Replies after it are sent as given: the
    /// handler decides whether the batch goes on, as SQL Server does per error.
    Error(SqlError),
}

/// The connection a batch runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session id (`@@SPID`): 51 for the first login of a server, then
    /// increasing (SQL Server keeps 1-50 for its own sessions).
    pub spid: u16,
    /// The login name the session authenticated with (`SUSER_SNAME()`).
    pub login: String,
}

/// What runs the T-SQL of the emulator's connections.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Runs one batch; replies in order. After an `Error` the batch ends (BACKUP: the cause, then 3013).
    ///
    /// The future is dropped when the client cancels the batch (an
    /// Attention) or disconnects; it runs on the connection's own task, so
    /// awaiting (a sleep, a lock, a device) never delays other connections.
    async fn batch(&self, session: &Session, sql: &str) -> Vec<Reply>;
}

/// The one SQL login the server accepts (SQL Server authentication).
#[derive(Clone)]
pub struct Login {
    /// The login name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A running TDS server. Dropping it stops accepting connections and closes
/// every open one (their running batches are dropped).
#[derive(Debug)]
pub struct ServeHandle {
    accept: JoinHandle<()>,
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so aborting
        // it aborts them and closes their sockets.
        self.accept.abort();
    }
}

/// Serves TDS on `listener` until the returned handle is dropped.
///
/// Each connection runs on its own task; sessions get spids 51, 52, ... in
/// the order their logins succeed. Must be called within a Tokio runtime.
pub fn serve(listener: TcpListener, login: Login, handler: Arc<dyn BatchHandler>) -> ServeHandle {
    let shared = Arc::new(Shared {
        login,
        handler,
        next_spid: AtomicU16::new(FIRST_SPID),
    });
    let accept = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = Arc::clone(&shared);
                        connections.spawn(async move {
                            if let Err(error) = serve_connection(stream, shared).await {
                                eprintln!("sqlserver emulator: connection from {peer}: {error}");
                            }
                        });
                    }
                    // Out of file descriptors and the like: keep serving the
                    // open connections and try again shortly.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    ServeHandle { accept }
}

/// The value a `datetime` column holds for `t`, as a client reads it back:
/// SQL Server rounds `datetime` to 1/300 s ("Rounded to increments of .000,
/// .003, or .007 seconds", datetime (Transact-SQL)), half up, so
/// 23:59:59.999 becomes midnight of the next day; tiberius converts the ticks
/// to nanoseconds rounding down (.123 reads back as .123333333).
pub fn round_to_datetime(t: NaiveDateTime) -> NaiveDateTime {
    let (days, ticks) = datetime_parts(t);
    let nanos = i64::from(ticks) * NANOS_PER_SECOND / DATETIME_TICKS_PER_SECOND;
    DATETIME_EPOCH.and_time(chrono::NaiveTime::MIN)
        + TimeDelta::days(i64::from(days))
        + TimeDelta::nanoseconds(nanos)
}

// ---------------------------------------------------------------------------
// Protocol constants (MS-TDS)
// ---------------------------------------------------------------------------

/// The first session id handed out; SQL Server keeps 1-50 for itself.
const FIRST_SPID: u16 = 51;
/// The version the PRELOGIN and LOGINACK announce: SQL Server 2022 (16.0.4135).
const PRODUCT_VERSION: (u8, u8, u16) = (16, 0, 4135);
/// TDS 7.4 as LOGINACK carries it (MS-TDS 2.2.7.14).
const TDS_VERSION_7_4: u32 = 0x7400_0004;
/// The server name ERROR and INFO tokens carry.
const SERVER_NAME: &str = "STRATA-EMULATOR";
/// The packet size until the login says otherwise, and the client's default.
const DEFAULT_PACKET_SIZE: usize = 4096;
/// The packet sizes a login may negotiate (MS-TDS 2.2.6.4, PacketSize).
const PACKET_SIZES: std::ops::RangeInclusive<usize> = 512..=32767;
/// A request larger than this is refused (the emulator's batches are short).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// The most bytes an `nvarchar(n)` value has; longer ones go as `nvarchar(max)`.
const NVARCHAR_MAX_BYTES: usize = 8000;
/// `SQL_Latin1_General_CP1_CI_AS` (LCID 0x0409, case/accent/kana/width
/// flags 0xD0, sort id 52), the default collation of a US-English install.
const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];
/// The longest message text (`sys.messages.text` is nvarchar(2048)).
const MAX_MESSAGE_UNITS: usize = 2047;
/// The longest column name (`sysname`).
const MAX_NAME_UNITS: usize = 128;
/// Packet header length (MS-TDS 2.2.3.1).
const HEADER_LEN: usize = 8;
/// Packet header status bit: the last packet of a message.
const STATUS_EOM: u8 = 0x01;

/// Packet types (MS-TDS 2.2.3.1.1).
mod packet {
    pub const SQL_BATCH: u8 = 0x01;
    pub const TABULAR_RESULT: u8 = 0x04;
    pub const ATTENTION: u8 = 0x06;
    pub const LOGIN7: u8 = 0x10;
    pub const PRELOGIN: u8 = 0x12;
}

/// Token types (MS-TDS 2.2.7).
mod token {
    pub const COLMETADATA: u8 = 0x81;
    pub const ERROR: u8 = 0xAA;
    pub const INFO: u8 = 0xAB;
    pub const LOGINACK: u8 = 0xAD;
    pub const ROW: u8 = 0xD1;
    pub const ENVCHANGE: u8 = 0xE3;
    pub const DONE: u8 = 0xFD;
}

/// DONE status bits (MS-TDS 2.2.7.6).
mod done {
    pub const FINAL: u16 = 0x00;
    pub const MORE: u16 = 0x01;
    pub const ERROR: u16 = 0x02;
    pub const COUNT: u16 = 0x10;
    pub const ATTN: u16 = 0x20;
}

/// TYPE_INFO type bytes (MS-TDS 2.2.5.4).
mod type_byte {
    pub const GUIDN: u8 = 0x24;
    pub const INTN: u8 = 0x26;
    pub const DATETIME2N: u8 = 0x2A;
    pub const BITN: u8 = 0x68;
    pub const NUMERICN: u8 = 0x6C;
    pub const DATETIMN: u8 = 0x6F;
    pub const NVARCHAR: u8 = 0xE7;
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const DATETIME_TICKS_PER_SECOND: i64 = 300;
const DATETIME_TICKS_PER_DAY: i64 = 86_400 * DATETIME_TICKS_PER_SECOND;
const DATETIME2_UNITS_PER_DAY: i64 = 86_400 * 10_000_000;
const DATETIME_EPOCH: NaiveDate = date(1900, 1, 1);
const DATETIME2_EPOCH: NaiveDate = date(1, 1, 1);
/// 10^25 - 1, the largest `numeric(25,0)`.
const NUMERIC25_MAX: u128 = 9_999_999_999_999_999_999_999_999;

const fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => date,
        None => panic!("not a calendar date"),
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

struct Shared {
    login: Login,
    handler: Arc<dyn BatchHandler>,
    next_spid: AtomicU16,
}

/// One connection from PRELOGIN to its close.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut requests = MessageReader::new(read);
    let mut responses = MessageWriter::new(write);

    let Some(prelogin) = requests.next().await? else {
        return Ok(());
    };
    if prelogin.kind != packet::PRELOGIN {
        return Err(protocol(format!(
            "the first message has packet type {:#04x}, not PRELOGIN",
            prelogin.kind
        )));
    }
    responses.send(&prelogin_response()).await?;

    let Some(login) = requests.next().await? else {
        return Ok(());
    };
    if login.kind != packet::LOGIN7 {
        // A client that asked for TLS sends its handshake here.
        return Err(protocol(format!(
            "expected LOGIN7 after PRELOGIN, got packet type {:#04x} (the emulator does not \
             support TLS: connect with encryption \"not supported\")",
            login.kind
        )));
    }
    let login = Login7::parse(&login.payload).map_err(protocol)?;
    if login.user != shared.login.user || login.password != shared.login.password {
        // MSSQLSERVER_18456: the client learns only that the login failed.
        let mut out = BytesMut::new();
        put_message(
            &mut out,
            token::ERROR,
            &SqlError::new(
                18456,
                14,
                format!("Login failed for user '{}'.", login.user),
            ),
        );
        put_done(&mut out, done::ERROR, 0);
        responses.send(&out).await?;
        return responses.inner.shutdown().await;
    }
    let spid = shared.next_spid.fetch_add(1, Ordering::Relaxed);
    responses.spid = spid;
    responses
        .send(&login_response(&login.database, login.packet_size))
        .await?;
    responses.packet_size = login.packet_size;
    let session = Session {
        spid,
        login: login.user,
    };

    loop {
        let Some(request) = requests.next().await? else {
            return Ok(());
        };
        let response = match request.kind {
            packet::SQL_BATCH => match batch_text(&request.payload) {
                Ok(sql) => {
                    let running = shared.handler.batch(&session, &sql);
                    tokio::select! {
                        replies = running => encode_replies(replies),
                        next = requests.next() => match next? {
                            Some(next) if next.kind == packet::ATTENTION => attention_ack(),
                            Some(next) => {
                                return Err(protocol(format!(
                                    "a request of packet type {:#04x} arrived while a batch was running",
                                    next.kind
                                )));
                            }
                            None => return Ok(()),
                        },
                    }
                }
                Err(message) => {
                    encode_replies(vec![Reply::Error(SqlError::new(50000, 16, message))])
                }
            },
            // Nothing is running: SQL Server still acknowledges it.
            packet::ATTENTION => attention_ack(),
            packet::PRELOGIN | packet::LOGIN7 => {
                return Err(protocol("a second login on a logged-in connection"));
            }
            // RPC (sp_executesql from tiberius's `query`/`execute`),
            // transaction manager and bulk load requests.
            _ => encode_replies(vec![Reply::Error(SqlError::new(
                50000,
                16,
                "the emulator takes SQL batches only",
            ))]),
        };
        responses.send(&response).await?;
    }
}

fn protocol(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// A client message: its packet type and the payloads of its packets joined.
struct Message {
    kind: u8,
    payload: BytesMut,
}

/// Reads whole messages from packets (MS-TDS 2.2.3.1: a message is packets
/// up to the one with END OF MESSAGE).
struct MessageReader<R> {
    inner: R,
    buffer: BytesMut,
    partial: Option<Message>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buffer: BytesMut::with_capacity(DEFAULT_PACKET_SIZE),
            partial: None,
        }
    }

    /// The next message; `None` when the client closed the connection between
    /// messages. Cancel-safe: bytes already read stay buffered, so a batch can
    /// race this against the handler to notice an Attention.
    async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            self.buffer.reserve(DEFAULT_PACKET_SIZE);
            if self.inner.read_buf(&mut self.buffer).await? == 0 {
                if self.buffer.is_empty() && self.partial.is_none() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn take_message(&mut self) -> io::Result<Option<Message>> {
        while self.buffer.len() >= HEADER_LEN {
            let length = usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]]));
            if length < HEADER_LEN {
                return Err(protocol(format!("a packet of length {length}")));
            }
            if self.buffer.len() < length {
                break;
            }
            let mut packet = self.buffer.split_to(length);
            let (kind, status) = (packet[0], packet[1]);
            packet.advance(HEADER_LEN);
            let message = self.partial.get_or_insert_with(|| Message {
                kind,
                payload: BytesMut::new(),
            });
            if message.payload.len() + packet.len() > MAX_REQUEST_BYTES {
                return Err(protocol("a request larger than 64 MiB"));
            }
            message.payload.unsplit(packet);
            if status & STATUS_EOM != 0 {
                return Ok(self.partial.take());
            }
        }
        Ok(None)
    }
}

/// Writes tabular-result messages as packets of the negotiated size.
struct MessageWriter<W> {
    inner: W,
    packet_size: usize,
    spid: u16,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            packet_size: DEFAULT_PACKET_SIZE,
            spid: 0,
        }
    }

    /// Sends `payload` as one message: packets of at most `packet_size`
    /// bytes, END OF MESSAGE on the last, packet ids 1, 2, ... (mod 256).
    async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let body = self.packet_size - HEADER_LEN;
        let count = payload.len().div_ceil(body).max(1);
        let mut wire = Vec::with_capacity(payload.len() + count * HEADER_LEN);
        for index in 0..count {
            let chunk = &payload
                [(index * body).min(payload.len())..((index + 1) * body).min(payload.len())];
            let status = if index + 1 == count { STATUS_EOM } else { 0 };
            let length = u16::try_from(chunk.len() + HEADER_LEN)
                .map_err(|_| protocol("a packet longer than 65535 bytes"))?;
            wire.push(packet::TABULAR_RESULT);
            wire.push(status);
            wire.extend_from_slice(&length.to_be_bytes());
            wire.extend_from_slice(&self.spid.to_be_bytes());
            wire.push((index + 1) as u8);
            wire.push(0);
            wire.extend_from_slice(chunk);
        }
        self.inner.write_all(&wire).await?;
        self.inner.flush().await
    }
}

// ---------------------------------------------------------------------------
// PRELOGIN and LOGIN7
// ---------------------------------------------------------------------------

/// The PRELOGIN answer (MS-TDS 2.2.6.5): VERSION, ENCRYPTION = NOT_SUP,
/// INSTOPT = 0 (whatever instance the client names is this one), MARS off.
fn prelogin_response() -> Vec<u8> {
    const ENCRYPT_NOT_SUP: u8 = 0x02;
    let (major, minor, build) = PRODUCT_VERSION;
    let version = [
        major,
        minor,
        (build >> 8) as u8,
        build as u8,
        0, // sub-build
        0,
    ];
    let options: [(u8, &[u8]); 4] = [
        (0x00, &version),
        (0x01, &[ENCRYPT_NOT_SUP]),
        (0x02, &[0x00]),
        (0x04, &[0x00]),
    ];
    let mut table = Vec::new();
    let mut data = Vec::new();
    let table_len = options.len() * 5 + 1;
    for (option, value) in options {
        table.push(option);
        table.extend_from_slice(&((table_len + data.len()) as u16).to_be_bytes());
        table.extend_from_slice(&(value.len() as u16).to_be_bytes());
        data.extend_from_slice(value);
    }
    table.push(0xFF);
    table.extend_from_slice(&data);
    table
}

/// What the emulator reads from a LOGIN7 (MS-TDS 2.2.6.4).
struct Login7 {
    /// The negotiated packet size: the client's, within 512..=32767
    /// (0 asks for the server's default, 4096).
    packet_size: usize,
    user: String,
    password: String,
    /// The initial database; `master` when the client names none.
    database: String,
}

impl Login7 {
    fn parse(payload: &[u8]) -> Result<Self, String> {
        // The fixed part ends with cbSSPILong at offset 90.
        if payload.len() < 94 {
            return Err(format!("a LOGIN7 of {} bytes", payload.len()));
        }
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([payload[at], payload[at + 1]]));
        // OffsetLength pairs: byte offset from the start of LOGIN7, length in
        // UTF-16 code units.
        let field = |at: usize| -> Result<&[u8], String> {
            let (offset, units) = (u16_at(at), u16_at(at + 2));
            payload
                .get(offset..offset + 2 * units)
                .ok_or_else(|| format!("a LOGIN7 field at {offset} past its end"))
        };
        let utf16 = |bytes: &[u8]| -> Result<String, String> {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| "a LOGIN7 string that is not UTF-16".into())
        };
        let requested = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
        let packet_size = match usize::try_from(requested) {
            Ok(0) | Err(_) => DEFAULT_PACKET_SIZE,
            Ok(size) => size.clamp(*PACKET_SIZES.start(), *PACKET_SIZES.end()),
        };
        // The client swaps the nibbles of each password byte, then XORs it
        // with 0xA5; undo both in reverse order.
        let password: Vec<u8> = field(44)?
            .iter()
            .map(|byte| (byte ^ 0xA5).rotate_left(4))
            .collect();
        let database = utf16(field(68)?)?;
        Ok(Self {
            packet_size,
            user: utf16(field(40)?)?,
            password: utf16(&password)?,
            database: if database.is_empty() {
                "master".into()
            } else {
                database
            },
        })
    }
}

/// The login response (MS-TDS 2.2.6.x "Login Response"): the database, the
/// collation, LOGINACK, the packet size, DONE.
fn login_response(database: &str, packet_size: usize) -> BytesMut {
    let mut out = BytesMut::new();

    let mut change = BytesMut::new();
    put_b_varchar(&mut change, database, MAX_NAME_UNITS);
    put_b_varchar(&mut change, "master", MAX_NAME_UNITS);
    put_env_change(&mut out, 1, &change);

    let mut change = BytesMut::new();
    change.put_u8(COLLATION.len() as u8);
    change.put_slice(&COLLATION);
    change.put_u8(0);
    put_env_change(&mut out, 7, &change);

    let mut ack = BytesMut::new();
    ack.put_u8(1); // interface: SQL_TSQL
    ack.put_u32(TDS_VERSION_7_4); // big-endian, as MS-TDS shows it
    put_b_varchar(&mut ack, "Microsoft SQL Server", MAX_NAME_UNITS);
    let (major, minor, build) = PRODUCT_VERSION;
    ack.put_u8(major);
    ack.put_u8(minor);
    ack.put_u16(build);
    out.put_u8(token::LOGINACK);
    out.put_u16_le(ack.len() as u16);
    out.put_slice(&ack);

    let mut change = BytesMut::new();
    put_b_varchar(&mut change, &packet_size.to_string(), MAX_NAME_UNITS);
    put_b_varchar(
        &mut change,
        &DEFAULT_PACKET_SIZE.to_string(),
        MAX_NAME_UNITS,
    );
    put_env_change(&mut out, 4, &change);

    put_done(&mut out, done::FINAL, 0);
    out
}

/// The text of a SQL batch (MS-TDS 2.2.6.7): ALL_HEADERS (a u32 total
/// length, then the headers), then UTF-16LE.
fn batch_text(payload: &[u8]) -> Result<String, String> {
    let headers = payload
        .get(..4)
        .map(|len| u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .filter(|&len| (4..=payload.len()).contains(&len))
        .ok_or("a malformed SQL batch: its ALL_HEADERS length is wrong")?;
    let text = &payload[headers..];
    if !text.len().is_multiple_of(2) {
        return Err("a malformed SQL batch: an odd number of UTF-16 bytes".into());
    }
    let units: Vec<u16> = text
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| "a SQL batch that is not UTF-16".into())
}

// ---------------------------------------------------------------------------
// Token stream
// ---------------------------------------------------------------------------

/// The DONE that acknowledges an Attention (MS-TDS 2.2.1.7).
fn attention_ack() -> BytesMut {
    let mut out = BytesMut::new();
    put_done(&mut out, done::ATTN, 0);
    out
}

/// The token stream of a batch's replies (see [`Reply`]); the last DONE has
/// no DONE_MORE.
fn encode_replies(replies: Vec<Reply>) -> BytesMut {
    let mut out = BytesMut::new();
    // Where the status of the last DONE is, and where that DONE ends.
    let mut last_done: Option<(usize, usize)> = None;
    let mut failed_statement = false;
    let mut end_statement = |out: &mut BytesMut, status: u16, rows: u64| {
        let at = put_done(out, status | done::MORE, rows);
        last_done = Some((at, out.len()));
    };
    for reply in replies {
        if failed_statement && !matches!(reply, Reply::Error(_)) {
            end_statement(&mut out, done::ERROR, 0);
            failed_statement = false;
        }
        match reply {
            Reply::Error(error) => {
                put_message(&mut out, token::ERROR, &error);
                failed_statement = true;
            }
            Reply::Info { number, message } => {
                put_message(&mut out, token::INFO, &SqlError::new(number, 0, message));
            }
            Reply::Done { rows_affected } => match rows_affected {
                Some(rows) => end_statement(&mut out, done::COUNT, rows),
                None => end_statement(&mut out, done::FINAL, 0),
            },
            Reply::Rows { columns, rows } => match check_rows(&columns, &rows) {
                Ok(()) => {
                    put_result_set(&mut out, &columns, &rows);
                    end_statement(&mut out, done::COUNT, rows.len() as u64);
                }
                Err(error) => {
                    put_message(&mut out, token::ERROR, &error);
                    failed_statement = true;
                }
            },
        }
    }
    if failed_statement {
        end_statement(&mut out, done::ERROR, 0);
    }
    match last_done {
        Some((at, end)) if end == out.len() => {
            let status = u16::from_le_bytes([out[at], out[at + 1]]) & !done::MORE;
            out[at..at + 2].copy_from_slice(&status.to_le_bytes());
        }
        // Nothing, or messages after the last statement: a final DONE.
        _ => {
            put_done(&mut out, done::FINAL, 0);
        }
    }
    out
}

/// Checks that every row fits its columns, as SQL Server's own result sets
/// always do; a handler that breaks this gets error 50000 saying where.
fn check_rows(columns: &[Column], rows: &[Vec<Value>]) -> Result<(), SqlError> {
    let bug = |message: String| SqlError::new(50000, 16, format!("emulator: {message}"));
    if columns.is_empty() || columns.len() > 4096 {
        return Err(bug(format!(
            "a result set of {} columns (SQL Server sends 1 to 4096)",
            columns.len()
        )));
    }
    for (index, row) in rows.iter().enumerate() {
        let number = index + 1;
        if row.len() != columns.len() {
            return Err(bug(format!(
                "row {number} has {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        for (column, value) in columns.iter().zip(row) {
            let fits = match value {
                Value::Null => true,
                Value::Numeric25(v) => v.unsigned_abs() <= NUMERIC25_MAX,
                Value::DateTime(t) => (1753..=9999).contains(&chrono::Datelike::year(t)),
                Value::DateTime2(t) => (1..=9999).contains(&chrono::Datelike::year(t)),
                _ => true,
            };
            if value.sql_type().is_some_and(|ty| ty != column.ty) || !fits {
                return Err(bug(format!(
                    "column '{}' ({}) of row {number} cannot hold {value:?}",
                    column.name, column.ty
                )));
            }
        }
    }
    Ok(())
}

/// COLMETADATA and the ROWs of a checked result set (MS-TDS 2.2.7.4, 2.2.7.19).
fn put_result_set(out: &mut BytesMut, columns: &[Column], rows: &[Vec<Value>]) {
    // An nvarchar column goes as nvarchar(max) when one of its values does
    // not fit nvarchar(4000).
    let long: Vec<bool> = (0..columns.len())
        .map(|index| {
            rows.iter().any(|row| {
                matches!(&row[index], Value::NVarChar(text)
                    if text.encode_utf16().count() * 2 > NVARCHAR_MAX_BYTES)
            })
        })
        .collect();

    out.put_u8(token::COLMETADATA);
    out.put_u16_le(columns.len() as u16);
    for (column, &long) in columns.iter().zip(&long) {
        out.put_u32_le(0); // user type
        out.put_u16_le(0x0001); // flags: nullable
        put_type_info(out, column.ty, long);
        put_b_varchar(out, &column.name, MAX_NAME_UNITS);
    }
    for row in rows {
        out.put_u8(token::ROW);
        for ((column, value), &long) in columns.iter().zip(row).zip(&long) {
            put_value(out, column.ty, value, long);
        }
    }
}

/// TYPE_INFO of a column (MS-TDS 2.2.5.5.1 ff.).
fn put_type_info(out: &mut BytesMut, ty: SqlType, long: bool) {
    match ty {
        SqlType::Int => out.put_slice(&[type_byte::INTN, 4]),
        SqlType::BigInt => out.put_slice(&[type_byte::INTN, 8]),
        SqlType::SmallInt => out.put_slice(&[type_byte::INTN, 2]),
        SqlType::TinyInt => out.put_slice(&[type_byte::INTN, 1]),
        SqlType::Bit => out.put_slice(&[type_byte::BITN, 1]),
        SqlType::NVarChar => {
            out.put_u8(type_byte::NVARCHAR);
            out.put_u16_le(if long {
                0xFFFF
            } else {
                NVARCHAR_MAX_BYTES as u16
            });
            out.put_slice(&COLLATION);
        }
        // Length 13 (a sign byte and 12 magnitude bytes: precision 20 to
        // 28), precision 25, scale 0.
        SqlType::Numeric25 => out.put_slice(&[type_byte::NUMERICN, 13, 25, 0]),
        SqlType::Guid => out.put_slice(&[type_byte::GUIDN, 16]),
        SqlType::DateTime => out.put_slice(&[type_byte::DATETIMN, 8]),
        SqlType::DateTime2 => out.put_slice(&[type_byte::DATETIME2N, 7]),
    }
}

/// One value of a ROW: its length, then its bytes (NULL: the length says so).
fn put_value(out: &mut BytesMut, ty: SqlType, value: &Value, long: bool) {
    match value {
        Value::Null => match (ty, long) {
            (SqlType::NVarChar, true) => out.put_u64_le(u64::MAX),
            (SqlType::NVarChar, false) => out.put_u16_le(0xFFFF),
            _ => out.put_u8(0),
        },
        Value::Int(v) => {
            out.put_u8(4);
            out.put_i32_le(*v);
        }
        Value::BigInt(v) => {
            out.put_u8(8);
            out.put_i64_le(*v);
        }
        Value::SmallInt(v) => {
            out.put_u8(2);
            out.put_i16_le(*v);
        }
        Value::TinyInt(v) => {
            out.put_u8(1);
            out.put_u8(*v);
        }
        Value::Bit(v) => {
            out.put_u8(1);
            out.put_u8(u8::from(*v));
        }
        Value::NVarChar(text) => {
            let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
            if long {
                // PLP: the total length, chunks of u32 length + bytes, and a
                // zero-length terminator.
                out.put_u64_le(bytes.len() as u64);
                if !bytes.is_empty() {
                    out.put_u32_le(bytes.len() as u32);
                    out.put_slice(&bytes);
                }
                out.put_u32_le(0);
            } else {
                out.put_u16_le(bytes.len() as u16);
                out.put_slice(&bytes);
            }
        }
        Value::Numeric25(v) => {
            out.put_u8(13);
            out.put_u8(u8::from(*v >= 0)); // 1 positive, 0 negative
            out.put_slice(&v.unsigned_abs().to_le_bytes()[..12]);
        }
        Value::Guid(guid) => {
            // The first three groups little-endian, the last two as written.
            out.put_u8(16);
            out.put_slice(&guid.to_bytes_le());
        }
        Value::DateTime(t) => {
            let (days, ticks) = datetime_parts(*t);
            out.put_u8(8);
            out.put_i32_le(days);
            out.put_u32_le(ticks);
        }
        Value::DateTime2(t) => {
            let (days, units) = datetime2_parts(*t);
            out.put_u8(8); // 5 bytes of time at scale 7, 3 bytes of date
            out.put_slice(&units.to_le_bytes()[..5]);
            out.put_slice(&days.to_le_bytes()[..3]);
        }
    }
}

/// Nanoseconds since midnight (a leap second counts into the next second).
fn nanos_of_day(t: NaiveDateTime) -> i64 {
    i64::from(t.num_seconds_from_midnight()) * NANOS_PER_SECOND + i64::from(t.nanosecond())
}

/// `datetime` as stored: days since 1900-01-01 and 1/300 s ticks since
/// midnight, rounded half up (see [`round_to_datetime`]).
fn datetime_parts(t: NaiveDateTime) -> (i32, u32) {
    let days = (t.date() - DATETIME_EPOCH).num_days();
    let ticks =
        (nanos_of_day(t) * DATETIME_TICKS_PER_SECOND + NANOS_PER_SECOND / 2) / NANOS_PER_SECOND;
    let total = days * DATETIME_TICKS_PER_DAY + ticks;
    (
        total.div_euclid(DATETIME_TICKS_PER_DAY) as i32,
        total.rem_euclid(DATETIME_TICKS_PER_DAY) as u32,
    )
}

/// `datetime2(7)` as stored: days since 0001-01-01 and 100 ns units since
/// midnight, rounded half up.
fn datetime2_parts(t: NaiveDateTime) -> (u32, u64) {
    let days = (t.date() - DATETIME2_EPOCH).num_days();
    let units = (nanos_of_day(t) + 50) / 100;
    let total = days * DATETIME2_UNITS_PER_DAY + units;
    (
        total.div_euclid(DATETIME2_UNITS_PER_DAY) as u32,
        total.rem_euclid(DATETIME2_UNITS_PER_DAY) as u64,
    )
}

/// An ERROR or INFO token (MS-TDS 2.2.7.10, 2.2.7.13).
fn put_message(out: &mut BytesMut, token: u8, error: &SqlError) {
    let mut body = BytesMut::new();
    body.put_u32_le(error.number);
    body.put_u8(error.state);
    body.put_u8(error.class);
    let text = utf16_prefix(&error.message, MAX_MESSAGE_UNITS);
    body.put_u16_le(text.len() as u16);
    put_utf16(&mut body, &text);
    put_b_varchar(&mut body, SERVER_NAME, MAX_NAME_UNITS);
    put_b_varchar(&mut body, "", MAX_NAME_UNITS); // procedure
    body.put_u32_le(1); // line
    out.put_u8(token);
    out.put_u16_le(body.len() as u16);
    out.put_slice(&body);
}

/// A DONE token (MS-TDS 2.2.7.6); returns where its status is.
fn put_done(out: &mut BytesMut, status: u16, rows: u64) -> usize {
    out.put_u8(token::DONE);
    let at = out.len();
    out.put_u16_le(status);
    out.put_u16_le(0); // current command
    out.put_u64_le(rows);
    at
}

/// An ENVCHANGE token (MS-TDS 2.2.7.9) of `kind` with its encoded values.
fn put_env_change(out: &mut BytesMut, kind: u8, values: &[u8]) {
    out.put_u8(token::ENVCHANGE);
    out.put_u16_le((values.len() + 1) as u16);
    out.put_u8(kind);
    out.put_slice(values);
}

/// A B_VARCHAR: a one-byte count of UTF-16 units, then the units.
fn put_b_varchar(out: &mut BytesMut, text: &str, max_units: usize) {
    let units = utf16_prefix(text, max_units.min(255));
    out.put_u8(units.len() as u8);
    put_utf16(out, &units);
}

fn put_utf16(out: &mut BytesMut, units: &[u16]) {
    for unit in units {
        out.put_u16_le(*unit);
    }
}

/// The UTF-16 units of the longest prefix of `text` of at most `max_units`
/// units that does not split a character.
fn utf16_prefix(text: &str, max_units: usize) -> Vec<u16> {
    let mut units = Vec::new();
    for ch in text.chars() {
        if units.len() + ch.len_utf16() > max_units {
            break;
        }
        let mut buffer = [0; 2];
        units.extend_from_slice(ch.encode_utf16(&mut buffer));
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::str::FromStr;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use tiberius::numeric::Numeric;
    use tiberius::{AuthMethod, Client, ColumnType, Config, EncryptionLevel};
    use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
    use uuid::Uuid;

    const USER: &str = "strata";
    const PASSWORD: &str = "Pa55w0rd!é";
    const LSN: i128 = 37_000_000_041_600_001;
    const LARGEST_NUMERIC: i128 = 9_999_999_999_999_999_999_999_999;
    const GUID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::from_str(text).unwrap()
    }

    fn rows(columns: Vec<Column>, rows: Vec<Vec<Value>>) -> Reply {
        Reply::Rows { columns, rows }
    }

    /// Answers the batches the tests send by name.
    #[derive(Default)]
    struct Scripted {
        /// Set when the `forever` batch's future is dropped.
        cancelled: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl BatchHandler for Scripted {
        async fn batch(&self, session: &Session, sql: &str) -> Vec<Reply> {
            match sql {
                "types" => vec![rows(
                    vec![
                        Column::new("int", SqlType::Int),
                        Column::new("bigint", SqlType::BigInt),
                        Column::new("smallint", SqlType::SmallInt),
                        Column::new("tinyint", SqlType::TinyInt),
                        Column::new("bit", SqlType::Bit),
                        Column::new("text", SqlType::NVarChar),
                        Column::new("lsn", SqlType::Numeric25),
                        Column::new("largest", SqlType::Numeric25),
                        Column::new("negative", SqlType::Numeric25),
                        Column::new("guid", SqlType::Guid),
                        Column::new("started", SqlType::DateTime),
                        Column::new("now", SqlType::DateTime2),
                    ],
                    vec![vec![
                        Value::Int(i32::MIN),
                        Value::BigInt(i64::MAX),
                        Value::SmallInt(-300),
                        Value::TinyInt(255),
                        Value::Bit(true),
                        Value::NVarChar("Grüße ']' 𝄞".into()),
                        Value::Numeric25(LSN),
                        Value::Numeric25(LARGEST_NUMERIC),
                        Value::Numeric25(-LARGEST_NUMERIC),
                        Value::Guid(Uuid::parse_str(GUID).unwrap()),
                        Value::DateTime(at("2026-03-01T10:00:00.123")),
                        Value::DateTime2(at("2026-03-01T10:00:00.1234567")),
                    ]],
                )],
                "nulls" => {
                    let types = [
                        SqlType::Int,
                        SqlType::BigInt,
                        SqlType::SmallInt,
                        SqlType::TinyInt,
                        SqlType::Bit,
                        SqlType::NVarChar,
                        SqlType::Numeric25,
                        SqlType::Guid,
                        SqlType::DateTime,
                        SqlType::DateTime2,
                    ];
                    let columns = types.iter().map(|&ty| Column::new(ty.name(), ty)).collect();
                    vec![rows(columns, vec![vec![Value::Null; types.len()]])]
                }
                "rounding" => vec![rows(
                    vec![Column::new("at", SqlType::DateTime)],
                    [
                        "2026-03-01T10:00:00.123",
                        "2026-03-01T23:59:59.995",
                        "2026-03-01T23:59:59.991",
                        "2026-03-01T23:59:59.999",
                    ]
                    .iter()
                    .map(|t| vec![Value::DateTime(at(t))])
                    .collect(),
                )],
                "long" => vec![rows(
                    vec![
                        Column::new("n4000", SqlType::NVarChar),
                        Column::new("nmax", SqlType::NVarChar),
                    ],
                    vec![
                        vec![
                            Value::NVarChar("é".repeat(3000)),
                            Value::NVarChar("x".repeat(5000)),
                        ],
                        vec![Value::Null, Value::Null],
                        vec![
                            Value::NVarChar(String::new()),
                            Value::NVarChar(String::new()),
                        ],
                    ],
                )],
                "multi" => vec![
                    rows(
                        vec![Column::new("id", SqlType::Int)],
                        vec![vec![Value::Int(1)], vec![Value::Int(2)]],
                    ),
                    Reply::Done {
                        rows_affected: Some(2),
                    },
                    rows(vec![Column::new("none", SqlType::NVarChar)], vec![]),
                    rows(
                        vec![Column::new("name", SqlType::NVarChar)],
                        vec![vec![Value::NVarChar("master".into())]],
                    ),
                ],
                "backup fails" => vec![
                    Reply::Info {
                        number: 3211,
                        message: "10 percent processed.".into(),
                    },
                    Reply::Error(SqlError::new(
                        3201,
                        16,
                        "Cannot open backup device 'https://blob/strata/x/stripe-000.bak'. \
                         Operating system error 50(The request is not supported.).",
                    )),
                    Reply::Error(SqlError::new(
                        3013,
                        16,
                        "BACKUP DATABASE is terminating abnormally.",
                    )),
                ],
                "info then rows" => vec![
                    Reply::Info {
                        number: 3211,
                        message: "100 percent processed.".into(),
                    },
                    rows(
                        vec![Column::new("file", SqlType::NVarChar)],
                        vec![vec![Value::NVarChar("appdb.mdf".into())]],
                    ),
                    Reply::Info {
                        number: 3014,
                        message: "BACKUP DATABASE successfully processed 1 pages.".into(),
                    },
                ],
                "big" => vec![rows(
                    vec![
                        Column::new("id", SqlType::Int),
                        Column::new("note", SqlType::NVarChar),
                    ],
                    (0..2000)
                        .map(|id| {
                            vec![
                                Value::Int(id),
                                Value::NVarChar(format!("row number {id:05}")),
                            ]
                        })
                        .collect(),
                )],
                "spid" => vec![rows(
                    vec![
                        Column::new("spid", SqlType::SmallInt),
                        Column::new("login", SqlType::NVarChar),
                    ],
                    vec![vec![
                        Value::SmallInt(session.spid as i16),
                        Value::NVarChar(session.login.clone()),
                    ]],
                )],
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    vec![rows(
                        vec![Column::new("slow", SqlType::Int)],
                        vec![vec![Value::Int(2)]],
                    )]
                }
                "forever" => {
                    let _guard = SetOnDrop(Arc::clone(&self.cancelled));
                    std::future::pending::<()>().await;
                    vec![]
                }
                "mismatch" => vec![rows(
                    vec![Column::new("database_id", SqlType::Int)],
                    vec![vec![Value::Int(1)], vec![Value::NVarChar("5".into())]],
                )],
                "overflow" => vec![rows(
                    vec![Column::new("lsn", SqlType::Numeric25)],
                    vec![vec![Value::Numeric25(LARGEST_NUMERIC + 1)]],
                )],
                "nothing" => vec![],
                other => vec![Reply::Error(SqlError::new(
                    50000,
                    16,
                    format!("no scripted batch '{other}'"),
                ))],
            }
        }
    }

    async fn start(handler: Arc<Scripted>) -> (ServeHandle, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let login = Login {
            user: USER.into(),
            password: PASSWORD.into(),
        };
        (serve(listener, login, handler), addr)
    }

    type TestClient = Client<Compat<TcpStream>>;

    async fn connect_as(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> tiberius::Result<TestClient> {
        let mut config = Config::new();
        config.host("127.0.0.1");
        config.port(addr.port());
        config.authentication(AuthMethod::sql_server(user, password));
        config.encryption(EncryptionLevel::NotSupported);
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Client::connect(config, tcp.compat_write()).await
    }

    async fn connect(addr: SocketAddr) -> TestClient {
        connect_as(addr, USER, PASSWORD).await.unwrap()
    }

    async fn query(
        client: &mut TestClient,
        sql: &str,
    ) -> tiberius::Result<Vec<Vec<tiberius::Row>>> {
        client.simple_query(sql).await?.into_results().await
    }

    fn server_error(error: tiberius::error::Error) -> tiberius::error::TokenError {
        match error {
            tiberius::error::Error::Server(token) => token,
            other => panic!("expected a server error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_value_type_reads_back_as_sent() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "types").await.unwrap();
        assert_eq!(results.len(), 1);
        let row = &results[0][0];

        let types: Vec<(&str, ColumnType)> = row
            .columns()
            .iter()
            .map(|c| (c.name(), c.column_type()))
            .collect();
        assert_eq!(
            types,
            [
                ("int", ColumnType::Int4),
                ("bigint", ColumnType::Int8),
                ("smallint", ColumnType::Int2),
                ("tinyint", ColumnType::Int1),
                ("bit", ColumnType::Bitn),
                ("text", ColumnType::NVarchar),
                ("lsn", ColumnType::Numericn),
                ("largest", ColumnType::Numericn),
                ("negative", ColumnType::Numericn),
                ("guid", ColumnType::Guid),
                ("started", ColumnType::Datetimen),
                ("now", ColumnType::Datetime2),
            ]
        );
        assert_eq!(row.get::<i32, _>("int"), Some(i32::MIN));
        assert_eq!(row.get::<i64, _>("bigint"), Some(i64::MAX));
        assert_eq!(row.get::<i16, _>("smallint"), Some(-300));
        assert_eq!(row.get::<u8, _>("tinyint"), Some(255));
        assert_eq!(row.get::<bool, _>("bit"), Some(true));
        assert_eq!(row.get::<&str, _>("text"), Some("Grüße ']' 𝄞"));
        let lsn = row.get::<Numeric, _>("lsn").unwrap();
        assert_eq!((lsn.value(), lsn.scale()), (LSN, 0));
        assert_eq!(
            row.get::<Numeric, _>("largest").unwrap().value(),
            LARGEST_NUMERIC
        );
        assert_eq!(
            row.get::<Numeric, _>("negative").unwrap().value(),
            -LARGEST_NUMERIC
        );
        assert_eq!(
            row.get::<Uuid, _>("guid").unwrap().to_string(),
            GUID,
            "a uniqueidentifier must reach the client in SQL Server's byte order"
        );
        // datetime keeps 1/300 s: .123 is 37 ticks, which reads as .123333333.
        assert_eq!(
            row.get::<NaiveDateTime, _>("started"),
            Some(at("2026-03-01T10:00:00.123333333"))
        );
        assert_eq!(
            row.get::<NaiveDateTime, _>("now"),
            Some(at("2026-03-01T10:00:00.1234567"))
        );
    }

    #[tokio::test]
    async fn null_of_every_type_reads_as_none() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "nulls").await.unwrap();
        let row = &results[0][0];
        assert_eq!(row.len(), 10);
        assert_eq!(row.get::<i32, _>(0), None);
        assert_eq!(row.get::<i64, _>(1), None);
        assert_eq!(row.get::<i16, _>(2), None);
        assert_eq!(row.get::<u8, _>(3), None);
        assert_eq!(row.get::<bool, _>(4), None);
        assert_eq!(row.get::<&str, _>(5), None);
        assert!(row.get::<Numeric, _>(6).is_none());
        assert_eq!(row.get::<Uuid, _>(7), None);
        assert_eq!(row.get::<NaiveDateTime, _>(8), None);
        assert_eq!(row.get::<NaiveDateTime, _>(9), None);
    }

    #[tokio::test]
    async fn datetime_is_rounded_to_a_three_hundredth_of_a_second() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "rounding").await.unwrap();
        let read: Vec<NaiveDateTime> = results[0]
            .iter()
            .map(|row| row.get::<NaiveDateTime, _>(0).unwrap())
            .collect();
        // datetime (Transact-SQL): .995 and .996 become .997 (299 ticks),
        // .991 becomes .990, .999 becomes the next day's midnight.
        let expected = [
            at("2026-03-01T10:00:00.123333333"),
            at("2026-03-01T23:59:59.996666666"),
            at("2026-03-01T23:59:59.990"),
            at("2026-03-02T00:00:00"),
        ];
        assert_eq!(read, expected);
        let sent = [
            "2026-03-01T10:00:00.123",
            "2026-03-01T23:59:59.995",
            "2026-03-01T23:59:59.991",
            "2026-03-01T23:59:59.999",
        ];
        let rounded: Vec<NaiveDateTime> = sent.iter().map(|t| round_to_datetime(at(t))).collect();
        assert_eq!(
            rounded, expected,
            "round_to_datetime predicts what clients read"
        );
    }

    #[tokio::test]
    async fn long_nvarchar_values_read_back_whole() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "long").await.unwrap();
        let rows = &results[0];
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].get::<&str, _>("n4000"),
            Some("é".repeat(3000).as_str())
        );
        assert_eq!(
            rows[0].get::<&str, _>("nmax"),
            Some("x".repeat(5000).as_str())
        );
        assert_eq!(rows[1].get::<&str, _>("n4000"), None);
        assert_eq!(rows[1].get::<&str, _>("nmax"), None);
        assert_eq!(rows[2].get::<&str, _>("n4000"), Some(""));
        assert_eq!(rows[2].get::<&str, _>("nmax"), Some(""));
    }

    #[tokio::test]
    async fn a_batch_returns_several_result_sets_in_order() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "multi").await.unwrap();
        let ids: Vec<i32> = results[0]
            .iter()
            .map(|r| r.get::<i32, _>(0).unwrap())
            .collect();
        assert_eq!(results.len(), 3, "two result sets and an empty one");
        assert_eq!(ids, [1, 2]);
        assert!(results[1].is_empty());
        assert_eq!(results[2][0].get::<&str, _>("name"), Some("master"));

        // The connection is ready for the next batch.
        let results = query(&mut client, "spid").await.unwrap();
        assert_eq!(results[0].len(), 1);
    }

    #[tokio::test]
    async fn an_error_reaches_the_client_with_number_class_and_message() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let error = server_error(query(&mut client, "backup fails").await.unwrap_err());
        // tiberius keeps the first error of a batch: the cause, not 3013.
        assert_eq!(error.code(), 3201);
        assert_eq!(error.class(), 16);
        assert_eq!(error.state(), 1);
        assert!(
            error
                .message()
                .starts_with("Cannot open backup device 'https://blob/strata/x/"),
            "{}",
            error.message()
        );

        let error = server_error(query(&mut client, "no such batch").await.unwrap_err());
        assert_eq!(error.message(), "no scripted batch 'no such batch'");

        // An error ends the batch, not the session.
        let results = query(&mut client, "spid").await.unwrap();
        assert_eq!(results[0][0].get::<&str, _>("login"), Some(USER));
    }

    #[tokio::test]
    async fn informational_messages_around_rows_leave_the_rows_intact() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "info then rows").await.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0][0].get::<&str, _>("file"), Some("appdb.mdf"));

        let results = query(&mut client, "nothing").await.unwrap();
        assert!(results.is_empty());
    }

    #[tokio::test]
    async fn a_wrong_password_or_user_is_login_failed_18456() {
        let (_server, addr) = start(Arc::default()).await;

        let error = server_error(connect_as(addr, USER, "wrong").await.err().unwrap());
        assert_eq!(error.code(), 18456);
        assert_eq!(error.class(), 14);
        assert_eq!(error.message(), "Login failed for user 'strata'.");

        let error = server_error(connect_as(addr, "sa", PASSWORD).await.err().unwrap());
        assert_eq!(error.code(), 18456);
        assert_eq!(error.message(), "Login failed for user 'sa'.");

        // The right password, with a non-ASCII character, logs in.
        let mut client = connect_as(addr, USER, PASSWORD).await.unwrap();
        assert_eq!(query(&mut client, "spid").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_result_larger_than_a_packet_arrives_whole() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let results = query(&mut client, "big").await.unwrap();
        let rows = &results[0];
        assert_eq!(rows.len(), 2000);
        for (index, row) in rows.iter().enumerate() {
            assert_eq!(row.get::<i32, _>("id"), Some(index as i32));
            assert_eq!(
                row.get::<&str, _>("note"),
                Some(format!("row number {index:05}").as_str())
            );
        }
    }

    #[tokio::test]
    async fn a_slow_batch_does_not_delay_another_connection() {
        let (_server, addr) = start(Arc::default()).await;
        let mut slow_client = connect(addr).await;
        let mut fast_client = connect(addr).await;

        let started = Instant::now();
        let slow = tokio::spawn(async move {
            let results = query(&mut slow_client, "slow").await.unwrap();
            (results[0][0].get::<i32, _>(0), started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let results = query(&mut fast_client, "spid").await.unwrap();
        let fast_elapsed = started.elapsed();
        assert_eq!(results[0].len(), 1);
        assert!(
            fast_elapsed < Duration::from_secs(1),
            "the fast batch took {fast_elapsed:?}"
        );
        assert!(
            !slow.is_finished(),
            "the slow batch answered before its 2 s sleep"
        );

        let (value, slow_elapsed) = slow.await.unwrap();
        assert_eq!(value, Some(2));
        assert!(slow_elapsed >= Duration::from_secs(2), "{slow_elapsed:?}");
    }

    #[tokio::test]
    async fn sessions_get_increasing_spids_from_51() {
        let (_server, addr) = start(Arc::default()).await;
        let mut first = connect(addr).await;
        let _failed = connect_as(addr, USER, "wrong").await.err().unwrap();
        let mut second = connect(addr).await;

        let spid = |results: Vec<Vec<tiberius::Row>>| results[0][0].get::<i16, _>("spid");
        assert_eq!(spid(query(&mut first, "spid").await.unwrap()), Some(51));
        assert_eq!(spid(query(&mut second, "spid").await.unwrap()), Some(52));
    }

    #[tokio::test]
    async fn an_attention_cancels_the_running_batch() {
        let handler = Arc::new(Scripted::default());
        let (_server, addr) = start(Arc::clone(&handler)).await;
        let mut client = connect(addr).await;

        let timed_out =
            tokio::time::timeout(Duration::from_millis(300), client.simple_query("forever"))
                .await
                .is_err();
        assert!(timed_out, "the batch never answers on its own");
        assert!(!handler.cancelled.load(Ordering::SeqCst));

        client.cancel_query().await.unwrap();
        assert!(
            handler.cancelled.load(Ordering::SeqCst),
            "the handler's batch is dropped on Attention"
        );
        let results = query(&mut client, "spid").await.unwrap();
        assert_eq!(results[0][0].get::<i16, _>("spid"), Some(51));
    }

    #[tokio::test]
    async fn rpc_requests_are_refused() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let error = server_error(client.query("SELECT @P1", &[&1i32]).await.err().unwrap());
        assert_eq!(error.code(), 50000);
        assert_eq!(error.class(), 16);
        assert_eq!(error.message(), "the emulator takes SQL batches only");

        assert_eq!(query(&mut client, "spid").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_value_its_column_cannot_hold_is_an_error_naming_it() {
        let (_server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;

        let error = server_error(query(&mut client, "mismatch").await.unwrap_err());
        assert_eq!(error.code(), 50000);
        assert_eq!(
            error.message(),
            "emulator: column 'database_id' (int) of row 2 cannot hold NVarChar(\"5\")"
        );

        let error = server_error(query(&mut client, "overflow").await.unwrap_err());
        assert!(
            error
                .message()
                .contains("column 'lsn' (numeric(25,0)) of row 1"),
            "{}",
            error.message()
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_closes_connections_and_stops_accepting() {
        let (server, addr) = start(Arc::default()).await;
        let mut client = connect(addr).await;
        assert_eq!(query(&mut client, "spid").await.unwrap().len(), 1);

        drop(server);
        // The abort takes effect when the runtime next runs the accept task.
        tokio::time::sleep(Duration::from_millis(100)).await;

        assert!(query(&mut client, "spid").await.is_err());
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn replies_end_with_one_final_done() {
        // The DONE statuses of an encoded batch, in order.
        fn statuses(replies: Vec<Reply>) -> Vec<u16> {
            let out = encode_replies(replies);
            let mut found = Vec::new();
            let mut at = 0;
            while at < out.len() {
                let token = out[at];
                match token {
                    token::DONE => {
                        found.push(u16::from_le_bytes([out[at + 1], out[at + 2]]));
                        at += 13;
                    }
                    token::ERROR | token::INFO => {
                        at += 3 + usize::from(u16::from_le_bytes([out[at + 1], out[at + 2]]));
                    }
                    other => panic!("unexpected token {other:#04x}"),
                }
            }
            found
        }
        let error = || Reply::Error(SqlError::new(3013, 16, "terminating"));
        let info = || Reply::Info {
            number: 3211,
            message: "10 percent processed.".into(),
        };

        assert_eq!(statuses(vec![]), [done::FINAL]);
        assert_eq!(
            statuses(vec![
                Reply::Done {
                    rows_affected: Some(3)
                },
                Reply::Done {
                    rows_affected: None
                }
            ]),
            [done::COUNT | done::MORE, done::FINAL]
        );
        assert_eq!(statuses(vec![info(), error(), error()]), [done::ERROR]);
        assert_eq!(
            statuses(vec![
                error(),
                Reply::Done {
                    rows_affected: None
                }
            ]),
            [done::ERROR | done::MORE, done::FINAL]
        );
        assert_eq!(
            statuses(vec![
                Reply::Done {
                    rows_affected: None
                },
                info()
            ]),
            [done::MORE, done::FINAL]
        );
    }

    #[tokio::test]
    async fn a_message_is_split_into_packets_of_the_negotiated_size() {
        let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let mut writer = MessageWriter::new(Vec::new());
        writer.packet_size = 512;
        writer.spid = 51;
        writer.send(&payload).await.unwrap();

        let mut wire = writer.inner.as_slice();
        let mut joined = Vec::new();
        let mut headers = Vec::new();
        while !wire.is_empty() {
            let length = usize::from(u16::from_be_bytes([wire[2], wire[3]]));
            assert!(length <= 512, "a packet of {length} bytes");
            headers.push((
                wire[0],
                wire[1],
                u16::from_be_bytes([wire[4], wire[5]]),
                wire[6],
            ));
            joined.extend_from_slice(&wire[HEADER_LEN..length]);
            wire = &wire[length..];
        }
        assert_eq!(joined, payload);
        // 2000 bytes in bodies of 504: four packets, END OF MESSAGE on the last.
        assert_eq!(
            headers,
            [
                (0x04, 0, 51, 1),
                (0x04, 0, 51, 2),
                (0x04, 0, 51, 3),
                (0x04, 1, 51, 4)
            ]
        );
    }

    #[test]
    fn login7_password_is_deobfuscated() {
        // LOGIN7 as a client writes it: every field empty but the user
        // ("sa") and the password ("ab"), nibble-swapped and XORed with 0xA5.
        let mut payload = vec![0u8; 94];
        payload[8..12].copy_from_slice(&8192u32.to_le_bytes());
        let mut data = Vec::new();
        let mut field = |at: usize, bytes: Vec<u8>, payload: &mut Vec<u8>| {
            let offset = (94 + data.len()) as u16;
            payload[at..at + 2].copy_from_slice(&offset.to_le_bytes());
            payload[at + 2..at + 4].copy_from_slice(&((bytes.len() / 2) as u16).to_le_bytes());
            data.extend(bytes);
        };
        let utf16 = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        field(40, utf16("sa"), &mut payload);
        let obfuscated = utf16("ab")
            .into_iter()
            .map(|b| b.rotate_left(4) ^ 0xA5)
            .collect();
        field(44, obfuscated, &mut payload);
        for at in [36, 48, 52, 56, 60, 64, 68, 78, 82, 86] {
            field(at, Vec::new(), &mut payload);
        }
        payload.extend(data);

        let login = Login7::parse(&payload).unwrap();
        assert_eq!((login.user.as_str(), login.password.as_str()), ("sa", "ab"));
        assert_eq!(login.database, "master");
        assert_eq!(login.packet_size, 8192);
        assert!(Login7::parse(&payload[..60]).is_err());
    }
}
