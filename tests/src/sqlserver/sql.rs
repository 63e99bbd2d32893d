//! The T-SQL the emulator understands: exactly the statements the Strata
//! plugin sends and the ones tests use, parsed into [`Statement`]s.
//!
//! Anything outside that subset is a syntax error (SQL Server's 102,
//! "Incorrect syntax near '...'."), so that a plugin query the emulator does
//! not model fails loudly instead of returning something made up.
//!
//! Lexical rules follow SQL Server's ("Database identifiers" and "Constants"
//! in the Transact-SQL reference): identifiers are bare words or delimited
//! `[...]` with `]` doubled inside; string constants are `'...'` or `N'...'`
//! with `'` doubled; keywords and function names are case-insensitive; a
//! batch holds statements one after another, each optionally ended by `;`.

use std::fmt;

/// A statement of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `SELECT ...` (with or without `FROM`).
    Select(Select),
    /// `CREATE DATABASE [name]`.
    CreateDatabase(String),
    /// `DROP DATABASE [name]`.
    DropDatabase(String),
    /// `ALTER DATABASE [name] SET RECOVERY FULL|SIMPLE|BULK_LOGGED`.
    SetRecovery {
        /// The database.
        database: String,
        /// The new recovery model.
        model: RecoveryModel,
    },
    /// `CREATE TABLE [db].[schema].[table] (column type [NOT] NULL, ...)`.
    CreateTable {
        /// The table's (up to three-part) name.
        table: ObjectName,
        /// The columns in order.
        columns: Vec<ColumnDef>,
    },
    /// `INSERT INTO table (columns) VALUES (...), (...)`.
    Insert {
        /// The table's (up to three-part) name.
        table: ObjectName,
        /// The column list.
        columns: Vec<String>,
        /// One literal per column per row.
        rows: Vec<Vec<Literal>>,
    },
    /// `CREATE CREDENTIAL [name] WITH IDENTITY = N'...'[, SECRET = N'...']`.
    CreateCredential {
        /// The credential's name (for a URL device: the container URL).
        name: String,
        /// `IDENTITY` (`SHARED ACCESS SIGNATURE` for a SAS credential).
        identity: String,
        /// `SECRET`, when given.
        secret: Option<String>,
    },
    /// `BACKUP DATABASE|LOG ...`.
    Backup(Backup),
    /// `RESTORE ...`.
    Restore(Restore),
}

/// A database's recovery model (`sys.databases.recovery_model_desc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryModel {
    /// `FULL`: every transaction logged, log backups required to truncate.
    Full,
    /// `BULK_LOGGED`: bulk operations minimally logged.
    BulkLogged,
    /// `SIMPLE`: the log truncates at checkpoints; no log backups.
    Simple,
}

impl RecoveryModel {
    /// The `sys.databases.recovery_model_desc` form: `FULL`, `BULK_LOGGED`, `SIMPLE`.
    pub fn desc(self) -> &'static str {
        match self {
            RecoveryModel::Full => "FULL",
            RecoveryModel::BulkLogged => "BULK_LOGGED",
            RecoveryModel::Simple => "SIMPLE",
        }
    }

    /// The `sys.databases.recovery_model` number: 1 full, 2 bulk-logged, 3 simple.
    pub fn number(self) -> u8 {
        match self {
            RecoveryModel::Full => 1,
            RecoveryModel::BulkLogged => 2,
            RecoveryModel::Simple => 3,
        }
    }

    /// The `msdb.dbo.backupset.recovery_model` form: `FULL`, `BULK-LOGGED`, `SIMPLE`.
    pub fn history_name(self) -> &'static str {
        match self {
            RecoveryModel::Full => "FULL",
            RecoveryModel::BulkLogged => "BULK-LOGGED",
            RecoveryModel::Simple => "SIMPLE",
        }
    }

    /// Reads either form back (`BULK_LOGGED` or `BULK-LOGGED`, any case).
    pub fn from_name(name: &str) -> Option<RecoveryModel> {
        match name.to_ascii_uppercase().as_str() {
            "FULL" => Some(RecoveryModel::Full),
            "BULK_LOGGED" | "BULK-LOGGED" => Some(RecoveryModel::BulkLogged),
            "SIMPLE" => Some(RecoveryModel::Simple),
            _ => None,
        }
    }
}

/// A dotted name (`[db].[dbo].[t]`, `sys.databases`, `msdb.dbo.backupset`), parts unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectName(pub Vec<String>);

impl ObjectName {
    /// The last part (the object itself).
    pub fn object(&self) -> &str {
        self.0.last().map(String::as_str).unwrap_or("")
    }

    /// The parts joined by `.` in lowercase, for case-insensitive lookups.
    pub fn key(&self) -> String {
        self.0.join(".").to_ascii_lowercase()
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A column of `CREATE TABLE`.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDef {
    /// The column's name.
    pub name: String,
    /// Its type.
    pub ty: TypeName,
    /// Whether it accepts NULL (`NULL`, the default, or `NOT NULL`).
    pub nullable: bool,
}

/// A type name as written: `int`, `nvarchar(200)`, `nvarchar(max)`, `numeric(25, 0)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeName {
    /// The name in lowercase.
    pub name: String,
    /// The arguments in parentheses; `None` stands for `max`.
    pub args: Vec<Option<u32>>,
}

/// A constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `NULL`.
    Null,
    /// An integer constant (with an optional leading `-`).
    Integer(i64),
    /// A string constant; `national` for the `N'...'` (Unicode) form.
    String {
        /// The text, with doubled quotes undone.
        text: String,
        /// Written `N'...'`.
        national: bool,
    },
}

/// An expression of a select list or of a `WHERE` comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Literal),
    /// A column (or, as a function argument, a bare word such as `TZOFFSET`).
    Column(String),
    /// A system variable such as `@@SPID` (name without `@@`, uppercase).
    Variable(String),
    /// A function call, `name(args)`; `name` may be dotted (`sys.fn_...`).
    Call {
        /// The function's name.
        name: ObjectName,
        /// Its arguments.
        args: Vec<Expr>,
    },
    /// `*` as the argument of `COUNT(*)`.
    Star,
    /// `CAST(expr AS type)`.
    Cast {
        /// The value converted.
        expr: Box<Expr>,
        /// The target type.
        ty: TypeName,
    },
}

/// An item of a select list.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectItem {
    /// The value.
    pub expr: Expr,
    /// `AS alias` (or a bare alias).
    pub alias: Option<String>,
}

/// A `SELECT` from at most one table or view.
#[derive(Clone, Debug, PartialEq)]
pub struct Select {
    /// `TOP (n)`.
    pub top: Option<u64>,
    /// The select list.
    pub items: Vec<SelectItem>,
    /// The table or view of `FROM`.
    pub from: Option<ObjectName>,
    /// `WHERE col = value AND ...`.
    pub filter: Vec<(String, Expr)>,
    /// `ORDER BY col [ASC|DESC], ...`.
    pub order_by: Vec<OrderKey>,
}

/// A key of `ORDER BY`.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderKey {
    /// The column (or select-list alias).
    pub column: String,
    /// `DESC`.
    pub descending: bool,
}

/// A backup device of `TO`/`FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// `URL = N'https://...'`.
    Url(String),
    /// `DISK = N'/path'`.
    Disk(String),
}

impl Device {
    /// The device's name as SQL Server prints it in messages and
    /// `backupmediafamily.physical_device_name`.
    pub fn name(&self) -> &str {
        match self {
            Device::Url(name) | Device::Disk(name) => name,
        }
    }
}

/// What a `BACKUP` copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupTarget {
    /// `BACKUP DATABASE` (full, or differential `WITH DIFFERENTIAL`).
    Database,
    /// `BACKUP LOG`.
    Log,
}

/// `BACKUP DATABASE|LOG [db] TO device, ... [WITH option, ...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    /// Database or log.
    pub target: BackupTarget,
    /// The database.
    pub database: String,
    /// The devices of the stripe set, in order.
    pub devices: Vec<Device>,
    /// The `WITH` options in order.
    pub options: Vec<BackupOption>,
}

/// An option of `BACKUP ... WITH` ("BACKUP (Transact-SQL)").
#[derive(Clone, Debug, PartialEq)]
pub enum BackupOption {
    /// `DIFFERENTIAL`.
    Differential,
    /// `COPY_ONLY`.
    CopyOnly,
    /// `FORMAT` / `NOFORMAT`.
    Format(bool),
    /// `INIT` / `NOINIT`.
    Init(bool),
    /// `CHECKSUM` / `NO_CHECKSUM`.
    Checksum(bool),
    /// `COMPRESSION` / `NO_COMPRESSION`.
    Compression(bool),
    /// `MAXTRANSFERSIZE = n` (bytes).
    MaxTransferSize(u64),
    /// `BLOCKSIZE = n` (bytes).
    BlockSize(u64),
    /// `BUFFERCOUNT = n`.
    BufferCount(u64),
    /// `STATS [= n]` (percent between progress messages).
    Stats(Option<u64>),
    /// `DESCRIPTION = N'...'`.
    Description(String),
    /// `NAME = N'...'`.
    Name(String),
}

/// `RESTORE ...` in the forms the emulator models.
#[derive(Clone, Debug, PartialEq)]
pub enum Restore {
    /// `RESTORE FILELISTONLY FROM devices [WITH ...]`.
    FileListOnly {
        /// The devices of the media set.
        devices: Vec<Device>,
    },
    /// `RESTORE HEADERONLY FROM devices [WITH ...]`.
    HeaderOnly {
        /// The devices of the media set.
        devices: Vec<Device>,
    },
    /// `RESTORE DATABASE [db] [FROM devices] [WITH ...]` (no devices: `WITH RECOVERY` only).
    Database {
        /// The target database.
        database: String,
        /// The devices; empty for `RESTORE DATABASE [db] WITH RECOVERY`.
        devices: Vec<Device>,
        /// The `WITH` options in order.
        options: Vec<RestoreOption>,
    },
    /// `RESTORE LOG [db] FROM devices [WITH ...]`.
    Log {
        /// The target database.
        database: String,
        /// The devices.
        devices: Vec<Device>,
        /// The `WITH` options in order.
        options: Vec<RestoreOption>,
    },
}

/// An option of `RESTORE ... WITH` ("RESTORE Statements - Arguments").
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreOption {
    /// `MOVE N'logical' TO N'physical'`.
    Move {
        /// The logical file name in the backup set.
        logical: String,
        /// Where the file goes.
        physical: String,
    },
    /// `RECOVERY`.
    Recovery,
    /// `NORECOVERY`.
    NoRecovery,
    /// `REPLACE`.
    Replace,
    /// `CHECKSUM` / `NO_CHECKSUM`.
    Checksum(bool),
    /// `STATS [= n]`.
    Stats(Option<u64>),
    /// `STOPAT = N'...'`: the literal as written (a local date and time).
    StopAt(String),
    /// `FILE = n`.
    File(u64),
}

/// A batch that is not in the emulator's T-SQL: SQL Server's error 102.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The text of the token the parser stopped at.
    pub near: String,
}

impl SyntaxError {
    /// SQL Server's error number for it.
    pub const NUMBER: u32 = 102;
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incorrect syntax near '{}'.", self.near)
    }
}

impl std::error::Error for SyntaxError {}

/// Parses a batch into its statements.
///
/// # Errors
/// [`SyntaxError`] naming the first token that does not fit the subset.
pub fn parse_batch(text: &str) -> Result<Vec<Statement>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0 };
    let mut statements = Vec::new();
    loop {
        while parser.eat_punct(';') {}
        if parser.at_end() {
            break;
        }
        statements.push(parser.statement()?);
    }
    Ok(statements)
}

/// Quotes an identifier as `QUOTENAME` does: `[name]` with `]` doubled.
pub fn quote_name(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Quotes a Unicode string constant: `N'text'` with `'` doubled.
pub fn quote_string(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A bare word: a keyword or an undelimited identifier.
    Word(String),
    /// A `[delimited]` identifier.
    Delimited(String),
    Str {
        text: String,
        national: bool,
    },
    Number(i64),
    Variable(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Tok {
    token: Token,
    /// The source text, for error messages.
    text: String,
}

fn tokenize(text: &str) -> Result<Vec<Tok>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let source = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let token = if c == '[' {
            let mut name = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(SyntaxError {
                            near: source(start, chars.len()),
                        });
                    }
                    Some(']') if chars.get(i + 1) == Some(&']') => {
                        name.push(']');
                        i += 2;
                    }
                    Some(']') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        name.push(other);
                        i += 1;
                    }
                }
            }
            Token::Delimited(name)
        } else if c == '\'' || ((c == 'N' || c == 'n') && chars.get(i + 1) == Some(&'\'')) {
            let national = c != '\'';
            i += if national { 2 } else { 1 };
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(SyntaxError {
                            near: source(start, chars.len()),
                        });
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        value.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            Token::Str {
                text: value,
                national,
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits = source(start, i);
            let value = digits.parse().map_err(|_| SyntaxError {
                near: digits.clone(),
            })?;
            Token::Number(value)
        } else if c == '@' && chars.get(i + 1) == Some(&'@') {
            i += 2;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Token::Variable(source(start + 2, i).to_ascii_uppercase())
        } else if c.is_alphabetic() || c == '_' || c == '#' {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '#' | '$' | '@'))
            {
                i += 1;
            }
            Token::Word(source(start, i))
        } else if matches!(c, '(' | ')' | ',' | '.' | '=' | '*' | ';' | '-') {
            i += 1;
            Token::Punct(c)
        } else {
            return Err(SyntaxError {
                near: c.to_string(),
            });
        };
        tokens.push(Tok {
            token,
            text: source(start, i),
        });
    }
    Ok(tokens)
}

/// Words that end a select item or a clause (never taken as a bare alias).
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "ORDER", "BY", "AND", "OR", "AS", "TOP", "INSERT", "INTO", "VALUES",
    "CREATE", "DROP", "ALTER", "BACKUP", "RESTORE", "WITH", "TO", "NULL", "NOT", "SET", "ASC",
    "DESC", "USE", "GROUP", "HAVING", "UNION", "JOIN", "ON",
];

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|t| &t.token)
    }

    fn error(&self) -> SyntaxError {
        let near = match self.tokens.get(self.pos) {
            Some(tok) => tok.text.clone(),
            None => self
                .tokens
                .last()
                .map(|t| t.text.clone())
                .unwrap_or_default(),
        };
        SyntaxError { near }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        if self.is_keyword(keyword) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SyntaxError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<(), SyntaxError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// A bare word, returned uppercase (keywords, option names).
    fn word(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let w = w.to_ascii_uppercase();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.error()),
        }
    }

    /// An identifier: delimited, or a bare word that is not reserved.
    fn identifier(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(Token::Delimited(name)) => {
                let name = name.clone();
                self.pos += 1;
                Ok(name)
            }
            Some(Token::Word(w)) if !is_reserved(w) => {
                let name = w.clone();
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.error()),
        }
    }

    fn object_name(&mut self) -> Result<ObjectName, SyntaxError> {
        let mut parts = vec![self.identifier()?];
        while self.eat_punct('.') {
            parts.push(self.identifier()?);
        }
        Ok(ObjectName(parts))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(Token::Str { text, .. }) => {
                let text = text.clone();
                self.pos += 1;
                Ok(text)
            }
            _ => Err(self.error()),
        }
    }

    fn unsigned(&mut self) -> Result<u64, SyntaxError> {
        match self.peek() {
            Some(&Token::Number(n)) => {
                self.pos += 1;
                u64::try_from(n).map_err(|_| self.error())
            }
            _ => Err(self.error()),
        }
    }

    fn literal(&mut self) -> Result<Literal, SyntaxError> {
        if self.eat_keyword("NULL") {
            return Ok(Literal::Null);
        }
        let negative = self.eat_punct('-');
        match self.peek().cloned() {
            Some(Token::Number(n)) => {
                self.pos += 1;
                Ok(Literal::Integer(if negative { -n } else { n }))
            }
            Some(Token::Str { text, national }) if !negative => {
                self.pos += 1;
                Ok(Literal::String { text, national })
            }
            _ => Err(self.error()),
        }
    }

    fn statement(&mut self) -> Result<Statement, SyntaxError> {
        let keyword = self.word()?;
        match keyword.as_str() {
            "SELECT" => self.select().map(Statement::Select),
            "CREATE" => {
                if self.eat_keyword("DATABASE") {
                    Ok(Statement::CreateDatabase(self.identifier()?))
                } else if self.eat_keyword("TABLE") {
                    self.create_table()
                } else if self.eat_keyword("CREDENTIAL") {
                    self.create_credential()
                } else {
                    Err(self.error())
                }
            }
            "DROP" => {
                self.expect_keyword("DATABASE")?;
                Ok(Statement::DropDatabase(self.identifier()?))
            }
            "ALTER" => {
                self.expect_keyword("DATABASE")?;
                let database = self.identifier()?;
                self.expect_keyword("SET")?;
                self.expect_keyword("RECOVERY")?;
                let model = RecoveryModel::from_name(&self.word()?).ok_or_else(|| {
                    self.pos -= 1;
                    self.error()
                })?;
                Ok(Statement::SetRecovery { database, model })
            }
            "INSERT" => self.insert(),
            "BACKUP" => self.backup().map(Statement::Backup),
            "RESTORE" => self.restore().map(Statement::Restore),
            _ => {
                self.pos -= 1;
                Err(self.error())
            }
        }
    }

    fn select(&mut self) -> Result<Select, SyntaxError> {
        let mut top = None;
        if self.eat_keyword("TOP") {
            let parenthesized = self.eat_punct('(');
            top = Some(self.unsigned()?);
            if parenthesized {
                self.expect_punct(')')?;
            }
        }
        let mut items = Vec::new();
        loop {
            let expr = self.expr()?;
            // `expr AS alias`, or a bare alias (any identifier but a keyword).
            let bare_alias = matches!(self.peek(), Some(Token::Word(w)) if !is_reserved(w))
                || matches!(self.peek(), Some(Token::Delimited(_)));
            let alias = if self.eat_keyword("AS") || bare_alias {
                Some(self.identifier()?)
            } else {
                None
            };
            items.push(SelectItem { expr, alias });
            if !self.eat_punct(',') {
                break;
            }
        }
        let mut select = Select {
            top,
            items,
            from: None,
            filter: Vec::new(),
            order_by: Vec::new(),
        };
        if self.eat_keyword("FROM") {
            select.from = Some(self.object_name()?);
        }
        if self.eat_keyword("WHERE") {
            loop {
                let column = self.identifier()?;
                self.expect_punct('=')?;
                let value = self.expr()?;
                select.filter.push((column, value));
                if !self.eat_keyword("AND") {
                    break;
                }
            }
        }
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let column = self.identifier()?;
                let descending = if self.eat_keyword("DESC") {
                    true
                } else {
                    self.eat_keyword("ASC");
                    false
                };
                select.order_by.push(OrderKey { column, descending });
                if !self.eat_punct(',') {
                    break;
                }
            }
        }
        if select.from.is_none() && !select.filter.is_empty() {
            return Err(self.error());
        }
        Ok(select)
    }

    fn expr(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek().cloned() {
            Some(Token::Variable(name)) => {
                self.pos += 1;
                Ok(Expr::Variable(name))
            }
            Some(Token::Str { .. }) | Some(Token::Number(_)) | Some(Token::Punct('-')) => {
                Ok(Expr::Literal(self.literal()?))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("NULL") => {
                Ok(Expr::Literal(self.literal()?))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("CAST") => {
                self.pos += 1;
                self.expect_punct('(')?;
                let expr = self.expr()?;
                self.expect_keyword("AS")?;
                let ty = self.type_name()?;
                self.expect_punct(')')?;
                Ok(Expr::Cast {
                    expr: Box::new(expr),
                    ty,
                })
            }
            Some(Token::Word(_)) | Some(Token::Delimited(_)) => {
                let name = self.object_name()?;
                if self.eat_punct('(') {
                    let mut args = Vec::new();
                    if !self.eat_punct(')') {
                        loop {
                            if self.eat_punct('*') {
                                args.push(Expr::Star);
                            } else {
                                args.push(self.expr()?);
                            }
                            if self.eat_punct(')') {
                                break;
                            }
                            self.expect_punct(',')?;
                        }
                    }
                    Ok(Expr::Call { name, args })
                } else if name.0.len() == 1 {
                    Ok(Expr::Column(name.0.into_iter().next().unwrap_or_default()))
                } else {
                    // Qualified column names (`t.col`) are outside the subset.
                    self.pos -= 1;
                    Err(self.error())
                }
            }
            _ => Err(self.error()),
        }
    }

    fn type_name(&mut self) -> Result<TypeName, SyntaxError> {
        let name = self.word()?.to_ascii_lowercase();
        let mut args = Vec::new();
        if self.eat_punct('(') {
            loop {
                if self.eat_keyword("MAX") {
                    args.push(None);
                } else {
                    let n = self.unsigned()?;
                    args.push(Some(u32::try_from(n).map_err(|_| self.error())?));
                }
                if self.eat_punct(')') {
                    break;
                }
                self.expect_punct(',')?;
            }
        }
        Ok(TypeName { name, args })
    }

    fn create_table(&mut self) -> Result<Statement, SyntaxError> {
        let table = self.object_name()?;
        self.expect_punct('(')?;
        let mut columns = Vec::new();
        loop {
            let name = self.identifier()?;
            let ty = self.type_name()?;
            let nullable = if self.eat_keyword("NOT") {
                self.expect_keyword("NULL")?;
                false
            } else {
                self.eat_keyword("NULL");
                true
            };
            columns.push(ColumnDef { name, ty, nullable });
            if self.eat_punct(')') {
                break;
            }
            self.expect_punct(',')?;
        }
        Ok(Statement::CreateTable { table, columns })
    }

    fn create_credential(&mut self) -> Result<Statement, SyntaxError> {
        let name = self.identifier()?;
        self.expect_keyword("WITH")?;
        self.expect_keyword("IDENTITY")?;
        self.expect_punct('=')?;
        let identity = self.string()?;
        let mut secret = None;
        if self.eat_punct(',') {
            self.expect_keyword("SECRET")?;
            self.expect_punct('=')?;
            secret = Some(self.string()?);
        }
        Ok(Statement::CreateCredential {
            name,
            identity,
            secret,
        })
    }

    fn insert(&mut self) -> Result<Statement, SyntaxError> {
        self.eat_keyword("INTO");
        let table = self.object_name()?;
        self.expect_punct('(')?;
        let mut columns = vec![self.identifier()?];
        while self.eat_punct(',') {
            columns.push(self.identifier()?);
        }
        self.expect_punct(')')?;
        self.expect_keyword("VALUES")?;
        let mut rows = Vec::new();
        loop {
            self.expect_punct('(')?;
            let mut row = vec![self.literal()?];
            while self.eat_punct(',') {
                row.push(self.literal()?);
            }
            self.expect_punct(')')?;
            rows.push(row);
            if !self.eat_punct(',') {
                break;
            }
        }
        Ok(Statement::Insert {
            table,
            columns,
            rows,
        })
    }

    fn devices(&mut self) -> Result<Vec<Device>, SyntaxError> {
        let mut devices = Vec::new();
        loop {
            let kind = self.word()?;
            self.expect_punct('=')?;
            let name = self.string()?;
            devices.push(match kind.as_str() {
                "URL" => Device::Url(name),
                "DISK" => Device::Disk(name),
                _ => {
                    self.pos -= 3;
                    return Err(self.error());
                }
            });
            if !self.eat_punct(',') {
                return Ok(devices);
            }
        }
    }

    /// `= n` after an option name.
    fn option_number(&mut self) -> Result<u64, SyntaxError> {
        self.expect_punct('=')?;
        self.unsigned()
    }

    fn option_string(&mut self) -> Result<String, SyntaxError> {
        self.expect_punct('=')?;
        self.string()
    }

    fn stats(&mut self) -> Result<Option<u64>, SyntaxError> {
        if self.eat_punct('=') {
            Ok(Some(self.unsigned()?))
        } else {
            Ok(None)
        }
    }

    fn backup(&mut self) -> Result<Backup, SyntaxError> {
        let target = match self.word()?.as_str() {
            "DATABASE" => BackupTarget::Database,
            "LOG" => BackupTarget::Log,
            _ => {
                self.pos -= 1;
                return Err(self.error());
            }
        };
        let database = self.identifier()?;
        self.expect_keyword("TO")?;
        let devices = self.devices()?;
        let mut options = Vec::new();
        if self.eat_keyword("WITH") {
            loop {
                let name = self.word()?;
                options.push(match name.as_str() {
                    "DIFFERENTIAL" => BackupOption::Differential,
                    "COPY_ONLY" => BackupOption::CopyOnly,
                    "FORMAT" => BackupOption::Format(true),
                    "NOFORMAT" => BackupOption::Format(false),
                    "INIT" => BackupOption::Init(true),
                    "NOINIT" => BackupOption::Init(false),
                    "CHECKSUM" => BackupOption::Checksum(true),
                    "NO_CHECKSUM" => BackupOption::Checksum(false),
                    "COMPRESSION" => BackupOption::Compression(true),
                    "NO_COMPRESSION" => BackupOption::Compression(false),
                    "MAXTRANSFERSIZE" => BackupOption::MaxTransferSize(self.option_number()?),
                    "BLOCKSIZE" => BackupOption::BlockSize(self.option_number()?),
                    "BUFFERCOUNT" => BackupOption::BufferCount(self.option_number()?),
                    "STATS" => BackupOption::Stats(self.stats()?),
                    "DESCRIPTION" => BackupOption::Description(self.option_string()?),
                    "NAME" => BackupOption::Name(self.option_string()?),
                    _ => {
                        self.pos -= 1;
                        return Err(self.error());
                    }
                });
                if !self.eat_punct(',') {
                    break;
                }
            }
        }
        Ok(Backup {
            target,
            database,
            devices,
            options,
        })
    }

    fn restore_options(&mut self) -> Result<Vec<RestoreOption>, SyntaxError> {
        let mut options = Vec::new();
        if !self.eat_keyword("WITH") {
            return Ok(options);
        }
        loop {
            let name = self.word()?;
            options.push(match name.as_str() {
                "MOVE" => {
                    let logical = self.string()?;
                    self.expect_keyword("TO")?;
                    let physical = self.string()?;
                    RestoreOption::Move { logical, physical }
                }
                "RECOVERY" => RestoreOption::Recovery,
                "NORECOVERY" => RestoreOption::NoRecovery,
                "REPLACE" => RestoreOption::Replace,
                "CHECKSUM" => RestoreOption::Checksum(true),
                "NO_CHECKSUM" => RestoreOption::Checksum(false),
                "STATS" => RestoreOption::Stats(self.stats()?),
                "STOPAT" => RestoreOption::StopAt(self.option_string()?),
                "FILE" => RestoreOption::File(self.option_number()?),
                _ => {
                    self.pos -= 1;
                    return Err(self.error());
                }
            });
            if !self.eat_punct(',') {
                return Ok(options);
            }
        }
    }

    fn restore(&mut self) -> Result<Restore, SyntaxError> {
        let kind = self.word()?;
        match kind.as_str() {
            "FILELISTONLY" | "HEADERONLY" => {
                self.expect_keyword("FROM")?;
                let devices = self.devices()?;
                self.restore_options()?;
                Ok(if kind == "FILELISTONLY" {
                    Restore::FileListOnly { devices }
                } else {
                    Restore::HeaderOnly { devices }
                })
            }
            "DATABASE" | "LOG" => {
                let database = self.identifier()?;
                let devices = if self.eat_keyword("FROM") {
                    self.devices()?
                } else {
                    Vec::new()
                };
                if kind == "LOG" && devices.is_empty() {
                    return Err(self.error());
                }
                let options = self.restore_options()?;
                Ok(if kind == "DATABASE" {
                    Restore::Database {
                        database,
                        devices,
                        options,
                    }
                } else {
                    Restore::Log {
                        database,
                        devices,
                        options,
                    }
                })
            }
            _ => {
                self.pos -= 1;
                Err(self.error())
            }
        }
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Statement {
        let mut statements = parse_batch(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(statements.len(), 1, "{text}");
        statements.remove(0)
    }

    fn s(text: &str) -> Literal {
        Literal::String {
            text: text.to_string(),
            national: true,
        }
    }

    #[test]
    fn discovery_select_without_from() {
        let text = "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version, CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition, CAST(SERVERPROPERTY('ServerName') AS nvarchar(128)) AS server_name, CAST(SERVERPROPERTY('IsHadrEnabled') AS int) AS hadr_enabled, CAST(IS_SRVROLEMEMBER('sysadmin') AS int) AS is_sysadmin, CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(4000)) AS data_path, CAST(SERVERPROPERTY('InstanceDefaultLogPath') AS nvarchar(4000)) AS log_path, DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes";
        let Statement::Select(select) = one(text) else {
            panic!("not a select")
        };
        assert_eq!(select.items.len(), 8);
        assert!(select.from.is_none());
        assert_eq!(select.items[0].alias.as_deref(), Some("product_version"));
        assert_eq!(
            select.items[0].expr,
            Expr::Cast {
                expr: Box::new(Expr::Call {
                    name: ObjectName(vec!["SERVERPROPERTY".into()]),
                    args: vec![Expr::Literal(Literal::String {
                        text: "ProductVersion".into(),
                        national: false
                    })],
                }),
                ty: TypeName {
                    name: "nvarchar".into(),
                    args: vec![Some(128)]
                },
            }
        );
        assert_eq!(
            select.items[7].expr,
            Expr::Call {
                name: ObjectName(vec!["DATEPART".into()]),
                args: vec![
                    Expr::Column("TZOFFSET".into()),
                    Expr::Call {
                        name: ObjectName(vec!["SYSDATETIMEOFFSET".into()]),
                        args: vec![]
                    }
                ],
            }
        );
    }

    #[test]
    fn select_with_where_order_and_top() {
        let Statement::Select(select) = one(
            "SELECT TOP (1) media_set_id FROM msdb.dbo.backupmediafamily WHERE physical_device_name = N'https://h:8443/strata/t''k/stripe-000.bak' ORDER BY media_set_id DESC",
        ) else {
            panic!()
        };
        assert_eq!(select.top, Some(1));
        assert_eq!(
            select.from.as_ref().map(|n| n.key()).as_deref(),
            Some("msdb.dbo.backupmediafamily")
        );
        assert_eq!(
            select.filter,
            vec![(
                "physical_device_name".to_string(),
                Expr::Literal(s("https://h:8443/strata/t'k/stripe-000.bak"))
            )]
        );
        assert_eq!(
            select.order_by,
            vec![OrderKey {
                column: "media_set_id".into(),
                descending: true
            }]
        );

        let Statement::Select(select) = one(
            "SELECT file_id, type, name, physical_name, size, differential_base_guid, differential_base_lsn FROM sys.master_files WHERE database_id = DB_ID(N'a]b') AND file_id = 1 ORDER BY file_id",
        ) else {
            panic!()
        };
        assert_eq!(select.items.len(), 7);
        assert_eq!(select.filter.len(), 2);
        assert_eq!(
            select.filter[0].1,
            Expr::Call {
                name: ObjectName(vec!["DB_ID".into()]),
                args: vec![Expr::Literal(s("a]b"))]
            }
        );
        assert_eq!(select.filter[1].1, Expr::Literal(Literal::Integer(1)));
    }

    #[test]
    fn aggregates_variables_and_dotted_functions() {
        let Statement::Select(select) =
            one("SELECT COUNT(*) AS n, MIN(id) AS min_id, MAX(id) AS max_id FROM [x].[dbo].[t]")
        else {
            panic!()
        };
        assert_eq!(
            select.items[0].expr,
            Expr::Call {
                name: ObjectName(vec!["COUNT".into()]),
                args: vec![Expr::Star]
            }
        );
        assert_eq!(
            select.from,
            Some(ObjectName(vec!["x".into(), "dbo".into(), "t".into()]))
        );

        let Statement::Select(select) = one("SELECT @@SPID AS spid") else {
            panic!()
        };
        assert_eq!(select.items[0].expr, Expr::Variable("SPID".into()));

        let Statement::Select(select) = one(
            "SELECT sys.fn_hadr_backup_is_preferred_replica(N'db') AS is_preferred, sys.fn_hadr_is_primary_replica(N'db') AS is_primary",
        ) else {
            panic!()
        };
        assert_eq!(
            select.items[1].expr,
            Expr::Call {
                name: ObjectName(vec!["sys".into(), "fn_hadr_is_primary_replica".into()]),
                args: vec![Expr::Literal(s("db"))]
            }
        );
    }

    #[test]
    fn delimited_identifiers_undouble_brackets() {
        assert_eq!(
            one("CREATE DATABASE [we]]ird name]"),
            Statement::CreateDatabase("we]ird name".into())
        );
        assert_eq!(
            one("drop database plain"),
            Statement::DropDatabase("plain".into())
        );
        assert_eq!(
            one("ALTER DATABASE [x] SET RECOVERY BULK_LOGGED"),
            Statement::SetRecovery {
                database: "x".into(),
                model: RecoveryModel::BulkLogged
            }
        );
        assert_eq!(quote_name("we]ird"), "[we]]ird]");
        assert_eq!(quote_string("it's"), "N'it''s'");
    }

    #[test]
    fn create_table_and_insert() {
        assert_eq!(
            one("CREATE TABLE [x].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)"),
            Statement::CreateTable {
                table: ObjectName(vec!["x".into(), "dbo".into(), "t".into()]),
                columns: vec![
                    ColumnDef {
                        name: "id".into(),
                        ty: TypeName {
                            name: "int".into(),
                            args: vec![]
                        },
                        nullable: false
                    },
                    ColumnDef {
                        name: "note".into(),
                        ty: TypeName {
                            name: "nvarchar".into(),
                            args: vec![Some(200)]
                        },
                        nullable: true
                    },
                ],
            }
        );
        assert_eq!(
            one("INSERT INTO [x].[dbo].[t] (id, note) VALUES (1, N'a'), (-2, N'it''s'), (3, NULL)"),
            Statement::Insert {
                table: ObjectName(vec!["x".into(), "dbo".into(), "t".into()]),
                columns: vec!["id".into(), "note".into()],
                rows: vec![
                    vec![Literal::Integer(1), s("a")],
                    vec![Literal::Integer(-2), s("it's")],
                    vec![Literal::Integer(3), Literal::Null],
                ],
            }
        );
    }

    #[test]
    fn create_credential() {
        assert_eq!(
            one(
                "CREATE CREDENTIAL [https://strata-blob.local:8443/strata] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = N'sv=x&sig=y'"
            ),
            Statement::CreateCredential {
                name: "https://strata-blob.local:8443/strata".into(),
                identity: "SHARED ACCESS SIGNATURE".into(),
                secret: Some("sv=x&sig=y".into()),
            }
        );
    }

    #[test]
    fn backup_with_striped_urls_and_every_option() {
        let Statement::Backup(backup) = one(
            "BACKUP DATABASE [db] TO URL = N'https://h/strata/t/stripe-000.bak', URL = N'https://h/strata/t/stripe-001.bak' WITH DIFFERENTIAL, COPY_ONLY, FORMAT, CHECKSUM, COMPRESSION, MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536, STATS = 10, DESCRIPTION = N'strata 01J'",
        ) else {
            panic!()
        };
        assert_eq!(backup.target, BackupTarget::Database);
        assert_eq!(backup.database, "db");
        assert_eq!(
            backup.devices,
            vec![
                Device::Url("https://h/strata/t/stripe-000.bak".into()),
                Device::Url("https://h/strata/t/stripe-001.bak".into())
            ]
        );
        assert_eq!(
            backup.options,
            vec![
                BackupOption::Differential,
                BackupOption::CopyOnly,
                BackupOption::Format(true),
                BackupOption::Checksum(true),
                BackupOption::Compression(true),
                BackupOption::MaxTransferSize(4194304),
                BackupOption::BlockSize(65536),
                BackupOption::Stats(Some(10)),
                BackupOption::Description("strata 01J".into()),
            ]
        );
        let Statement::Backup(backup) = one("BACKUP LOG [x] TO DISK = N'/b/x.trn'") else {
            panic!()
        };
        assert_eq!(backup.target, BackupTarget::Log);
        assert_eq!(backup.devices, vec![Device::Disk("/b/x.trn".into())]);
        assert!(backup.options.is_empty());
        let Statement::Backup(backup) =
            one("BACKUP LOG [x] TO URL = N'u' WITH NO_COMPRESSION, STATS")
        else {
            panic!()
        };
        assert_eq!(
            backup.options,
            vec![BackupOption::Compression(false), BackupOption::Stats(None)]
        );
    }

    #[test]
    fn restore_forms() {
        assert_eq!(
            one("RESTORE FILELISTONLY FROM URL = N'a', URL = N'b'"),
            Statement::Restore(Restore::FileListOnly {
                devices: vec![Device::Url("a".into()), Device::Url("b".into())]
            })
        );
        assert_eq!(
            one("RESTORE HEADERONLY FROM DISK = N'/f.bak'"),
            Statement::Restore(Restore::HeaderOnly {
                devices: vec![Device::Disk("/f.bak".into())]
            })
        );
        assert_eq!(
            one(
                "RESTORE DATABASE [new] FROM URL = N'u' WITH MOVE N'db' TO N'/d/new.mdf', MOVE N'db_log' TO N'/d/new_log.ldf', NORECOVERY, CHECKSUM, STATS = 10, REPLACE"
            ),
            Statement::Restore(Restore::Database {
                database: "new".into(),
                devices: vec![Device::Url("u".into())],
                options: vec![
                    RestoreOption::Move {
                        logical: "db".into(),
                        physical: "/d/new.mdf".into()
                    },
                    RestoreOption::Move {
                        logical: "db_log".into(),
                        physical: "/d/new_log.ldf".into()
                    },
                    RestoreOption::NoRecovery,
                    RestoreOption::Checksum(true),
                    RestoreOption::Stats(Some(10)),
                    RestoreOption::Replace,
                ],
            })
        );
        assert_eq!(
            one(
                "RESTORE LOG [new] FROM URL = N'u' WITH NORECOVERY, CHECKSUM, STOPAT = N'2026-12-01T10:00:00.123'"
            ),
            Statement::Restore(Restore::Log {
                database: "new".into(),
                devices: vec![Device::Url("u".into())],
                options: vec![
                    RestoreOption::NoRecovery,
                    RestoreOption::Checksum(true),
                    RestoreOption::StopAt("2026-12-01T10:00:00.123".into()),
                ],
            })
        );
        assert_eq!(
            one("RESTORE DATABASE [new] WITH RECOVERY"),
            Statement::Restore(Restore::Database {
                database: "new".into(),
                devices: vec![],
                options: vec![RestoreOption::Recovery],
            })
        );
    }

    #[test]
    fn several_statements_in_one_batch() {
        let statements = parse_batch(
            "CREATE DATABASE [a];\nCREATE TABLE [a].[dbo].[t] (id int)\nSELECT SYSUTCDATETIME() AS now;",
        )
        .unwrap();
        assert_eq!(statements.len(), 3);
        assert!(matches!(statements[2], Statement::Select(_)));
    }

    #[test]
    fn outside_the_subset_is_error_102_naming_the_token() {
        let cases = [
            ("SELECT * FROM sys.databases", "*"),
            (
                "SELECT name FROM sys.databases JOIN sys.master_files ON 1 = 1",
                "JOIN",
            ),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("BACKUP DATABASE [x] TO TAPE = N'\\\\.\\tape0'", "TAPE"),
            (
                "BACKUP DATABASE [x] TO URL = N'u' WITH ENCRYPTION",
                "ENCRYPTION",
            ),
            ("RESTORE VERIFYONLY FROM URL = N'u'", "VERIFYONLY"),
            (
                "SELECT name FROM sys.databases WHERE name LIKE N'a%'",
                "LIKE",
            ),
            ("SELECT name FROM sys.databases WHERE", "WHERE"),
            ("CREATE DATABASE [unterminated", "[unterminated"),
            ("SELECT N'unterminated", "N'unterminated"),
        ];
        for (text, near) in cases {
            let err = parse_batch(text).expect_err(text);
            assert_eq!(err.near, near, "{text}");
            assert_eq!(err.to_string(), format!("Incorrect syntax near '{near}'."));
        }
    }
}
