//! Table definitions: column types in ClickHouse's spelling, their Arrow types, and the
//! serialized record the coordinator stores.

use std::sync::Arc;

use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tandem_parts::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tandem_parts::{Codec, PartitionSpec};

use crate::error::Error;

/// Whether `name` can name a table or a column: letters, digits and `_`, not starting with a digit.
pub use tandem_coordinator::valid_name;

/// Version of the serialized table definition; new fields get serde defaults.
pub const TABLE_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Bool,
    String,
    Date,
    /// Seconds since the epoch (ClickHouse `DateTime`).
    DateTime,
    /// `DateTime64(precision)`: precision 0, 3, 6 or 9 digits of fractional seconds.
    DateTime64(u8),
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::UInt8 => DataType::UInt8,
            ColumnType::UInt16 => DataType::UInt16,
            ColumnType::UInt32 => DataType::UInt32,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::String => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::DateTime => DataType::Timestamp(TimeUnit::Second, None),
            ColumnType::DateTime64(p) => DataType::Timestamp(
                match p {
                    0 => TimeUnit::Second,
                    1..=3 => TimeUnit::Millisecond,
                    4..=6 => TimeUnit::Microsecond,
                    _ => TimeUnit::Nanosecond,
                },
                None,
            ),
        }
    }

    pub fn name(self) -> String {
        match self {
            ColumnType::DateTime64(p) => format!("DateTime64({p})"),
            other => format!("{other:?}"),
        }
    }

    pub fn is_temporal(self) -> bool {
        matches!(self, ColumnType::Date | ColumnType::DateTime | ColumnType::DateTime64(_))
    }

    /// The ClickHouse name of an Arrow type, for result metadata of arbitrary queries.
    pub fn name_of_arrow(data_type: &DataType) -> String {
        let base = match data_type {
            DataType::Int8 => "Int8",
            DataType::Int16 => "Int16",
            DataType::Int32 => "Int32",
            DataType::Int64 => "Int64",
            DataType::UInt8 => "UInt8",
            DataType::UInt16 => "UInt16",
            DataType::UInt32 => "UInt32",
            DataType::UInt64 => "UInt64",
            DataType::Float32 => "Float32",
            DataType::Float64 => "Float64",
            DataType::Boolean => "Bool",
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "String",
            DataType::Date32 | DataType::Date64 => "Date",
            DataType::Timestamp(TimeUnit::Second, _) => "DateTime",
            DataType::Timestamp(TimeUnit::Millisecond, _) => "DateTime64(3)",
            DataType::Timestamp(TimeUnit::Microsecond, _) => "DateTime64(6)",
            DataType::Timestamp(TimeUnit::Nanosecond, _) => "DateTime64(9)",
            other => return other.to_string(),
        };
        base.to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Stable identity of the column: parts record which of their Parquet columns holds which
    /// id, so a renamed column keeps its data and a dropped-then-re-added name does not
    /// resurrect old values.
    #[serde(default)]
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// `Nullable(T)`: NULL is stored. Otherwise a missing or NULL value becomes the column's
    /// DEFAULT, or its type's default (0, '', 1970-01-01), as in ClickHouse.
    pub nullable: bool,
    /// `DEFAULT <literal>`: what inserts that omit the column store, and what parts written
    /// before the column existed read as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl ColumnDef {
    pub fn type_name(&self) -> String {
        if self.nullable { format!("Nullable({})", self.column_type.name()) } else { self.column_type.name() }
    }
}

/// Per-table settings (`SETTINGS k = v` in CREATE TABLE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSettings {
    /// How many of the most recent insert blocks are remembered for deduplication.
    #[serde(default = "default_dedup_window_blocks")]
    pub dedup_window_blocks: u64,
    /// How long an insert block is remembered for deduplication.
    #[serde(default = "default_dedup_window_seconds")]
    pub dedup_window_seconds: u64,
    /// Fields of JSONEachRow / CSVWithNames / TSVWithNames inserts that the table does not have
    /// become new Nullable columns of the inferred type (as InfluxDB does). Off by default.
    #[serde(default)]
    pub auto_add_columns: bool,
    /// What an insert into this table waits for before its ack, unless the request says.
    #[serde(default)]
    pub insert_durability: Durability,
    /// Whether the table's parts are merged in the background (on by default; off is for
    /// maintenance windows, or a test that counts parts).
    #[serde(default = "default_true")]
    pub background_merges: bool,
    /// A partition with at least this many active parts slows inserts down (up to 1 s each).
    #[serde(default = "default_parts_to_delay_insert")]
    pub parts_to_delay_insert: u64,
    /// A partition with at least this many active parts refuses inserts (429).
    #[serde(default = "default_parts_to_throw_insert")]
    pub parts_to_throw_insert: u64,
    /// How many asynchronous inserts are remembered for deduplication (ClickHouse's
    /// `replicated_deduplication_window_for_async_inserts`), next to `dedup_window_seconds`.
    #[serde(default = "default_async_dedup_window_blocks")]
    pub async_dedup_window_blocks: u64,
    /// `async_insert` for inserts into this table that do not say; None: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_insert: Option<bool>,
    /// `async_insert_busy_timeout_ms` for this table; None: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_insert_busy_timeout_ms: Option<u64>,
    /// `async_insert_max_data_size` for this table; None: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_insert_max_data_size: Option<u64>,
    /// How long a partition waits between merges that only rewrite parts to leave out rows
    /// past the TTL (ClickHouse's name and default: 4 hours). Parts wholly past it are dropped
    /// at any time: that costs no rewrite.
    #[serde(default = "default_merge_with_ttl_timeout")]
    pub merge_with_ttl_timeout: u64,
    /// How many storage nodes keep each part on their disk besides the bucket: the node that
    /// wrote it and `local_replicas - 1` others chosen by the part's hash among the live storage
    /// nodes; the others read it from the bucket once it is there. None: every node (needs no
    /// object store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_replicas: Option<u64>,
    /// How new parts and merges compress their columns (ClickHouse's MergeTree setting of
    /// that name): LZ4 unless the table says otherwise; existing parts keep theirs until merged.
    #[serde(default)]
    pub default_compression_codec: Codec,
}

fn default_merge_with_ttl_timeout() -> u64 {
    4 * 3600
}

fn default_async_dedup_window_blocks() -> u64 {
    1_000_000
}

fn default_true() -> bool {
    true
}

fn default_parts_to_delay_insert() -> u64 {
    150
}

fn default_parts_to_throw_insert() -> u64 {
    300
}

/// `insert_durability`: where an insert's parts must be before the ack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsynced on this node's disk (and, with `insert_quorum`, on that many nodes); the
    /// object-store copy is uploaded in the background.
    #[default]
    Local,
    /// Also stored in the object store: the part is uploaded before it is registered.
    ObjectStore,
}

impl Durability {
    pub fn parse(value: &str) -> Result<Durability, Error> {
        match value {
            "local" => Ok(Durability::Local),
            "object_store" => Ok(Durability::ObjectStore),
            other => {
                Err(Error::bad_request(format!("insert_durability takes `local` or `object_store`, got `{other}`")))
            }
        }
    }
}

fn default_dedup_window_blocks() -> u64 {
    1000
}

fn default_dedup_window_seconds() -> u64 {
    7 * 24 * 3600
}

impl TableSettings {
    /// Sets a setting by its SQL name (tandem's or ClickHouse's spelling).
    pub fn set(&mut self, key: &str, value: &serde_json::Value) -> Result<(), Error> {
        let number = || {
            value.as_u64().ok_or_else(|| {
                Error::bad_request(format!("table setting `{key}` needs a non-negative integer, got {value}"))
            })
        };
        match key {
            "dedup_window_blocks" | "replicated_deduplication_window" => self.dedup_window_blocks = number()?,
            "dedup_window_seconds" | "replicated_deduplication_window_seconds" => self.dedup_window_seconds = number()?,
            "auto_add_columns" => match number()? {
                flag @ (0 | 1) => self.auto_add_columns = flag == 1,
                other => {
                    return Err(Error::bad_request(format!("table setting `auto_add_columns` is 0 or 1, got {other}")));
                }
            },
            "background_merges" => match number()? {
                flag @ (0 | 1) => self.background_merges = flag == 1,
                other => {
                    return Err(Error::bad_request(format!(
                        "table setting `background_merges` is 0 or 1, got {other}"
                    )));
                }
            },
            "parts_to_delay_insert" => self.parts_to_delay_insert = number()?,
            "async_dedup_window_blocks" | "replicated_deduplication_window_for_async_inserts" => {
                self.async_dedup_window_blocks = number()?
            }
            "async_insert" => match number()? {
                flag @ (0 | 1) => self.async_insert = Some(flag == 1),
                other => {
                    return Err(Error::bad_request(format!("table setting `async_insert` is 0 or 1, got {other}")));
                }
            },
            "async_insert_busy_timeout_ms" => self.async_insert_busy_timeout_ms = Some(number()?),
            "async_insert_max_data_size" => self.async_insert_max_data_size = Some(number()?),
            "merge_with_ttl_timeout" => self.merge_with_ttl_timeout = number()?,
            "local_replicas" => match number()? {
                0 => {
                    return Err(Error::bad_request(
                        "table setting `local_replicas` is at least 1 (the node that writes a part keeps it until it is \
                         in the bucket)",
                    ));
                }
                n => self.local_replicas = Some(n),
            },
            "parts_to_throw_insert" => match number()? {
                0 => {
                    return Err(Error::bad_request(
                        "table setting `parts_to_throw_insert` must be at least 1 (0 would refuse every insert)",
                    ));
                }
                n => self.parts_to_throw_insert = n,
            },
            "default_compression_codec" => {
                let text = value.as_str().ok_or_else(|| {
                    Error::bad_request(format!(
                        "table setting `default_compression_codec` is a codec such as 'LZ4' or 'ZSTD(3)', got {value}"
                    ))
                })?;
                self.default_compression_codec =
                    Codec::parse(text).map_err(|e| Error::bad_request(format!("table setting `{key}`: {e}")))?;
            }
            "insert_durability" => {
                let text = value.as_str().ok_or_else(|| {
                    Error::bad_request(format!(
                        "table setting `insert_durability` is 'local' or 'object_store', got {value}"
                    ))
                })?;
                self.insert_durability = Durability::parse(text)?;
            }
            _ => {
                return Err(Error::bad_request(format!(
                    "unknown table setting `{key}` = {value}; known: dedup_window_blocks, dedup_window_seconds, \
                     auto_add_columns (0 or 1), insert_durability ('local' or 'object_store'), \
                     background_merges (0 or 1), parts_to_delay_insert, parts_to_throw_insert, async_insert (0 or 1), \
                     async_insert_busy_timeout_ms, async_insert_max_data_size, async_dedup_window_blocks, \
                     merge_with_ttl_timeout, local_replicas, default_compression_codec ('LZ4', 'ZSTD(level)' or 'NONE')"
                )));
            }
        }
        Ok(())
    }
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            dedup_window_blocks: default_dedup_window_blocks(),
            dedup_window_seconds: default_dedup_window_seconds(),
            auto_add_columns: false,
            insert_durability: Durability::Local,
            background_merges: true,
            parts_to_delay_insert: default_parts_to_delay_insert(),
            parts_to_throw_insert: default_parts_to_throw_insert(),
            async_dedup_window_blocks: default_async_dedup_window_blocks(),
            async_insert: None,
            async_insert_busy_timeout_ms: None,
            async_insert_max_data_size: None,
            merge_with_ttl_timeout: default_merge_with_ttl_timeout(),
            local_replicas: None,
            default_compression_codec: Codec::default(),
        }
    }
}

/// The unit of a TTL's interval, as ClickHouse's `INTERVAL n <unit>` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl IntervalUnit {
    pub fn name(self) -> &'static str {
        match self {
            IntervalUnit::Second => "SECOND",
            IntervalUnit::Minute => "MINUTE",
            IntervalUnit::Hour => "HOUR",
            IntervalUnit::Day => "DAY",
            IntervalUnit::Week => "WEEK",
            IntervalUnit::Month => "MONTH",
            IntervalUnit::Quarter => "QUARTER",
            IntervalUnit::Year => "YEAR",
        }
    }

    /// `now` moved back by `count` of this unit (months and years by the calendar); None
    /// when that lies before year 0.
    fn before(self, now: DateTime<Utc>, count: u32) -> Option<DateTime<Utc>> {
        let seconds = |unit: i64| now.checked_sub_signed(TimeDelta::try_seconds(unit.checked_mul(i64::from(count))?)?);
        let months = |unit: u32| now.checked_sub_months(Months::new(unit.checked_mul(count)?));
        match self {
            IntervalUnit::Second => seconds(1),
            IntervalUnit::Minute => seconds(60),
            IntervalUnit::Hour => seconds(3600),
            IntervalUnit::Day => seconds(86_400),
            IntervalUnit::Week => seconds(7 * 86_400),
            IntervalUnit::Month => months(1),
            IntervalUnit::Quarter => months(3),
            IntervalUnit::Year => months(12),
        }
    }
}

/// `TTL <column> + INTERVAL <count> <unit>`: a row expires once its time column lies further
/// in the past than the interval; merges leave it out, and parts whose rows have all expired
/// are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableTtl {
    /// The Date, DateTime or DateTime64 column, by its stable id (a rename keeps the TTL).
    pub column_id: u32,
    pub count: u32,
    pub unit: IntervalUnit,
}

/// Where a TTL stands at one moment: rows whose column (`column`, by its current name) holds
/// a value below `before` (in the column's unit: days for Date, its time unit otherwise)
/// have expired.
#[derive(Clone, Debug, PartialEq)]
pub struct TtlCutoff {
    pub column: ColumnDef,
    pub before: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub format_version: u32,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub order_by: Vec<String>,
    pub partition_by: PartitionSpec,
    #[serde(default)]
    pub settings: TableSettings,
    /// The id the next added column gets.
    #[serde(default)]
    pub next_column_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TableTtl>,
}

impl TableDef {
    /// The Arrow schema of the table. Every Arrow field is nullable so that parts written
    /// under older schemas read missing columns as NULL; NOT NULL is enforced at insert.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.column_type.arrow(), true)).collect::<Vec<_>>(),
        ))
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a table definition always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut def: TableDef = serde_json::from_slice(bytes)?;
        def.assign_column_ids();
        Ok(def)
    }

    /// Gives every column an id (columns of definitions written before ids existed get their
    /// position), and makes `next_column_id` follow the largest.
    pub fn assign_column_ids(&mut self) {
        let first_free = self.columns.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        for (id, column) in (first_free..).zip(self.columns.iter_mut().filter(|c| c.id == 0)) {
            column.id = id;
        }
        let max = self.columns.iter().map(|c| c.id).max().unwrap_or(0);
        self.next_column_id = self.next_column_id.max(max + 1);
    }

    /// Sets (or with None removes) the table's TTL on the time column `column`.
    pub fn set_ttl(&mut self, ttl: Option<(&str, u32, IntervalUnit)>) -> Result<(), Error> {
        let Some((column, count, unit)) = ttl else {
            self.ttl = None;
            return Ok(());
        };
        let Some(def) = self.column(column) else {
            return Err(Error::bad_request(format!(
                "TTL names column `{column}`, which table `{}` does not have",
                self.name
            )));
        };
        if !def.column_type.is_temporal() {
            return Err(Error::bad_request(format!(
                "TTL needs a Date, DateTime or DateTime64 column; `{column}` is {}",
                def.type_name()
            )));
        }
        self.ttl = Some(TableTtl { column_id: def.id, count, unit });
        Ok(())
    }

    /// The TTL as ClickHouse writes it: `ts + INTERVAL 30 DAY`.
    pub fn ttl_expression(&self) -> Option<String> {
        let ttl = self.ttl?;
        let column = self.columns.iter().find(|c| c.id == ttl.column_id)?;
        Some(format!("{} + INTERVAL {} {}", column.name, ttl.count, ttl.unit.name()))
    }

    /// Which rows the TTL has expired at `now`; None without a TTL.
    pub fn ttl_cutoff(&self, now: DateTime<Utc>) -> Option<TtlCutoff> {
        let ttl = self.ttl?;
        let column = self.columns.iter().find(|c| c.id == ttl.column_id)?.clone();
        let Some(at) = ttl.unit.before(now, ttl.count) else {
            return Some(TtlCutoff { column, before: i64::MIN });
        };
        let before = match column.column_type.arrow() {
            // A day expires once its midnight lies before the cutoff.
            DataType::Date32 => at.timestamp().div_euclid(86_400) + i64::from(at.timestamp().rem_euclid(86_400) > 0),
            DataType::Timestamp(TimeUnit::Millisecond, _) => at.timestamp_millis(),
            DataType::Timestamp(TimeUnit::Microsecond, _) => at.timestamp_micros(),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => at.timestamp_nanos_opt().unwrap_or(i64::MAX),
            _ => at.timestamp(),
        };
        Some(TtlCutoff { column, before })
    }

    /// Part column name -> column id, recorded in each part's manifest.
    pub fn column_ids(&self) -> std::collections::BTreeMap<String, u32> {
        self.columns.iter().map(|c| (c.name.clone(), c.id)).collect()
    }
}

/// Whether node `me` keeps part `id` on its disk under `local_replicas`: the writer does; of
/// the other live storage nodes, the `local_replicas - 1` that rank highest by blake3 of (part,
/// node) do (rendezvous hashing: every node computes the same choice from the same list, and a
/// node joining or leaving moves only the parts it ranks for).
pub fn keeps_locally(
    id: &tandem_parts::PartId,
    writer: Option<&str>,
    me: &str,
    live: &[String],
    local_replicas: u64,
) -> bool {
    if writer == Some(me) {
        return true;
    }
    let mut ranked: Vec<(blake3::Hash, &str)> = live
        .iter()
        .map(String::as_str)
        .filter(|n| Some(*n) != writer)
        .map(|n| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(id.as_bytes());
            hasher.update(n.as_bytes());
            (hasher.finalize(), n)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.as_bytes().cmp(a.0.as_bytes()));
    let others = usize::try_from(local_replicas.saturating_sub(1)).unwrap_or(usize::MAX);
    ranked.iter().take(others).any(|(_, n)| *n == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replicas_choose_the_writer_and_the_same_others_everywhere() {
        let live: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
        let mut per_node = std::collections::BTreeMap::<&str, usize>::new();
        for part in 0..300u32 {
            let id = tandem_parts::PartId::of_bytes(&part.to_le_bytes());
            let keepers: Vec<&str> =
                live.iter().map(String::as_str).filter(|me| keeps_locally(&id, Some("n1"), me, &live, 2)).collect();
            assert_eq!(keepers.len(), 2, "the writer and one other");
            assert_eq!(keepers[0], "n1");
            for keeper in keepers {
                *per_node.entry(keeper).or_default() += 1;
            }
            let without_writer = live.iter().filter(|me| keeps_locally(&id, Some("gone"), me, &live, 3)).count();
            assert_eq!(without_writer, 2, "a writer that is gone leaves local_replicas - 1 others");
        }
        for node in ["n2", "n3", "n4", "n5"] {
            let share = per_node[node];
            assert!((40..=110).contains(&share), "{node} keeps {share} of 300: spread by hash");
        }
    }

    fn table(column_type: ColumnType, count: u32, unit: IntervalUnit) -> TableDef {
        let mut def = TableDef {
            format_version: TABLE_FORMAT_VERSION,
            name: "t".into(),
            columns: vec![ColumnDef {
                id: 1,
                name: "ts".into(),
                column_type,
                nullable: false,
                default: None,
                comment: None,
            }],
            order_by: vec![],
            partition_by: PartitionSpec::None,
            settings: TableSettings::default(),
            next_column_id: 2,
            ttl: None,
        };
        def.set_ttl(Some(("ts", count, unit))).unwrap();
        def
    }

    #[test]
    fn a_ttl_cutoff_is_in_the_columns_own_unit() {
        let now = DateTime::parse_from_rfc3339("2026-03-31T12:00:00Z").unwrap().with_timezone(&Utc);
        let before = |t, count, unit| table(t, count, unit).ttl_cutoff(now).unwrap().before;
        let day = 86_400;
        let noon = now.timestamp();
        assert_eq!(before(ColumnType::DateTime, 1, IntervalUnit::Day), noon - day);
        assert_eq!(before(ColumnType::DateTime64(3), 2, IntervalUnit::Hour), (noon - 7200) * 1000);
        assert_eq!(before(ColumnType::DateTime64(9), 1, IntervalUnit::Second), (noon - 1) * 1_000_000_000);
        // 2026-02-28 (no 31st): calendar months, as ClickHouse subtracts them.
        let feb = DateTime::parse_from_rfc3339("2026-02-28T12:00:00Z").unwrap().timestamp();
        assert_eq!(before(ColumnType::DateTime, 1, IntervalUnit::Month), feb);
        // Noon of the 30th minus a day: the 30th's midnight lies before it, the 31st's does not.
        let march_30 = noon.div_euclid(day) - 1;
        assert_eq!(before(ColumnType::Date, 1, IntervalUnit::Day), march_30 + 1, "days below the 31st expire");
        assert_eq!(before(ColumnType::DateTime, u32::MAX, IntervalUnit::Year), i64::MIN, "nothing is that old");
    }
}
