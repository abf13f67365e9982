//! DataFusion's functions whose output size a query chooses (`repeat('x', 2147483647)` is 50
//! bytes of SQL and 2 GB of memory), wrapped so that an oversized result is refused before it
//! is allocated. DataFusion's memory pool does not see these allocations, so the bound is
//! checked on the arguments.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use crate::limits::MAX_STRING_VALUE_BYTES;

/// Most bytes one call of a sized function may produce for a whole batch of rows.
const MAX_BATCH_OUTPUT_BYTES: u64 = 256 << 20;

/// Replaces the built-in functions whose output size is an argument with bounded ones.
pub fn register_bounded(ctx: &SessionContext) {
    use datafusion::functions::{string, unicode};
    for (inner, sizing) in
        [(string::repeat(), Sizing::Repeat), (unicode::lpad(), Sizing::Pad), (unicode::rpad(), Sizing::Pad)]
    {
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, sizing }));
    }
}

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sizing {
    /// `repeat(s, n)`: `len(s) * n` bytes per row.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad(...)`: `n` characters per row, up to 4 bytes each.
    Pad,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    sizing: Sizing,
}

impl Bounded {
    /// The largest value and the total bytes the call would produce.
    fn output_bytes(&self, args: &ScalarFunctionArgs) -> DfResult<(u64, u64)> {
        let rows = args.number_rows.max(1);
        let counts = match args.args.get(1) {
            Some(count) => as_i64s(count, rows)?,
            None => return Ok((0, 0)),
        };
        let per_row: Vec<u64> = match self.sizing {
            Sizing::Repeat => {
                let lengths = match args.args.first() {
                    Some(string) => string_lengths(string, rows)?,
                    None => return Ok((0, 0)),
                };
                lengths.iter().zip(&counts).map(|(l, n)| (*l).saturating_mul((*n).max(0) as u64)).collect()
            }
            Sizing::Pad => counts.iter().map(|n| ((*n).max(0) as u64).saturating_mul(4)).collect(),
        };
        let largest = per_row.iter().copied().max().unwrap_or(0);
        Ok((largest, per_row.iter().fold(0u64, |total, b| total.saturating_add(*b))))
    }
}

/// An integer argument as one value per row (NULL counts as 0).
fn as_i64s(value: &ColumnarValue, rows: usize) -> DfResult<Vec<i64>> {
    let array = value.to_array(rows)?;
    let array = cast_with_options(&array, &DataType::Int64, &CastOptions::default())?;
    Ok(array.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0)).collect())
}

/// A string argument's byte length per row (NULL counts as 0).
fn string_lengths(value: &ColumnarValue, rows: usize) -> DfResult<Vec<u64>> {
    let array: ArrayRef = value.to_array(rows)?;
    let lengths = length(&array)?;
    let lengths = cast_with_options(&lengths, &DataType::Int64, &CastOptions::default())?;
    Ok(lengths.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0).max(0) as u64).collect())
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (largest, total) = self.output_bytes(&args)?;
        if largest > MAX_STRING_VALUE_BYTES as u64 {
            return exec_err!(
                "{}() would produce a value of {largest} bytes; the largest value a function may produce is {} bytes",
                self.name(),
                MAX_STRING_VALUE_BYTES
            );
        }
        if total > MAX_BATCH_OUTPUT_BYTES {
            return exec_err!(
                "{}() would produce {total} bytes for {} rows at once; the limit is {MAX_BATCH_OUTPUT_BYTES} bytes",
                self.name(),
                args.number_rows
            );
        }
        self.inner.invoke_with_args(args)
    }
}
