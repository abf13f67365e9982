//! ClickHouse's general scalar functions: `if`, `multiIf`, `intDiv`, `toString`, the number
//! conversions (`toInt64`, `toUInt64OrNull`, `toFloat64OrZero`, ...), and what a client asks
//! when it connects (`version()`, `timezone()`, `currentDatabase()`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringBuilder, new_null_array};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{CastOptions, cast_with_options, is_null};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::type_coercion::binary::type_union_resolution;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::clickhouse_http::{CLICKHOUSE_VERSION, SERVER_TIMEZONE};
use crate::formats::values::Column;

/// The functions of this module, to register in a session.
pub fn functions() -> Vec<ScalarUDF> {
    let mut functions = vec![
        ScalarUDF::new_from_impl(If::new("if")),
        ScalarUDF::new_from_impl(If::new("multiIf")),
        ScalarUDF::new_from_impl(IntDiv { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::new_from_impl(Divide { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::new_from_impl(ToString { signature: Signature::any(1, Volatility::Immutable) }),
        ScalarUDF::new_from_impl(Constant::new("version", CLICKHOUSE_VERSION)),
        ScalarUDF::new_from_impl(Constant::new("timezone", SERVER_TIMEZONE)),
        ScalarUDF::new_from_impl(Constant::new("serverTimezone", SERVER_TIMEZONE)),
        ScalarUDF::new_from_impl(Constant::new("currentDatabase", "default")),
    ];
    let numbers = [
        ("Int8", DataType::Int8),
        ("Int16", DataType::Int16),
        ("Int32", DataType::Int32),
        ("Int64", DataType::Int64),
        ("UInt8", DataType::UInt8),
        ("UInt16", DataType::UInt16),
        ("UInt32", DataType::UInt32),
        ("UInt64", DataType::UInt64),
        ("Float32", DataType::Float32),
        ("Float64", DataType::Float64),
    ];
    for (name, target) in numbers {
        for on_failure in [OnFailure::Error, OnFailure::Null, OnFailure::Zero] {
            functions.push(ScalarUDF::new_from_impl(ToNumber::new(name, target.clone(), on_failure)));
        }
    }
    functions
}

/// `if(cond, then, else)` and `multiIf(cond1, then1, cond2, then2, ..., else)`: every branch
/// is evaluated, then the first true condition picks (a NULL condition is false).
#[derive(Debug, PartialEq, Eq, Hash)]
struct If {
    name: &'static str,
    signature: Signature,
}

impl If {
    fn new(name: &'static str) -> Self {
        If { name, signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for If {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.len() < 3 || arg_types.len().is_multiple_of(2) || (self.name == "if" && arg_types.len() != 3) {
            return plan_err!(
                "{} takes a condition, a value if true and a value if false{}",
                self.name,
                if self.name == "multiIf" { " (then more condition-value pairs before the last value)" } else { "" }
            );
        }
        let values: Vec<DataType> = arg_types
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1 || *i == arg_types.len() - 1)
            .map(|(_, t)| t.clone())
            .collect();
        let Some(common) = type_union_resolution(&values) else {
            return plan_err!("{}: the branches have types with nothing in common: {values:?}", self.name);
        };
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, _)| if i % 2 == 0 && i != arg_types.len() - 1 { DataType::Boolean } else { common.clone() })
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types.last().cloned().unwrap_or(DataType::Null))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let data_type = args.arg_fields.last().map(|f| f.data_type().clone()).unwrap_or(DataType::Null);
        Ok(Arc::new(Field::new(self.name, data_type, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args.args.iter().map(|a| a.to_array(rows)).collect::<DfResult<Vec<_>>>()?;
        let Some(mut result) = arrays.last().cloned() else { return exec_err!("{} without arguments", self.name) };
        for pair in (0..arrays.len() - 1).step_by(2).rev() {
            let (Some(condition), Some(value)) = (arrays.get(pair), arrays.get(pair + 1)) else { continue };
            let condition = cast_with_options(condition, &DataType::Boolean, &CastOptions::default())?;
            // A NULL condition is false: the mask takes only true values.
            let condition: BooleanArray = condition.as_boolean().iter().map(|c| Some(c.unwrap_or(false))).collect();
            result = zip(&condition, value, &result)?;
        }
        Ok(ColumnarValue::Array(result))
    }
}

/// `intDiv(a, b)`: the quotient truncated to an integer; a division by zero is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IntDiv {
    signature: Signature,
}

impl ScalarUDFImpl for IntDiv {
    fn name(&self) -> &str {
        "intDiv"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let (Some(a), Some(b)) = (args.args.first(), args.args.get(1)) else {
            return exec_err!("intDiv takes two numbers");
        };
        let (a, b) = (a.to_array(rows)?, b.to_array(rows)?);
        let integers = a.data_type().is_integer() && b.data_type().is_integer();
        let mut out = Vec::with_capacity(rows);
        if integers {
            let strict = CastOptions { safe: false, ..Default::default() };
            let a = cast_with_options(&a, &DataType::Int64, &strict)?;
            let b = cast_with_options(&b, &DataType::Int64, &strict)?;
            let (a, b) = (a.as_primitive::<Int64Type>(), b.as_primitive::<Int64Type>());
            for i in 0..rows {
                if a.is_null(i) || b.is_null(i) {
                    out.push(None);
                    continue;
                }
                match a.value(i).checked_div(b.value(i)) {
                    Some(q) => out.push(Some(q)),
                    None if b.value(i) == 0 => return exec_err!("intDiv: division by zero"),
                    None => return exec_err!("intDiv: {} / {} overflows Int64", a.value(i), b.value(i)),
                }
            }
        } else {
            let a = cast_with_options(&a, &DataType::Float64, &CastOptions::default())?;
            let b = cast_with_options(&b, &DataType::Float64, &CastOptions::default())?;
            let (a, b) = (a.as_primitive::<Float64Type>(), b.as_primitive::<Float64Type>());
            for i in 0..rows {
                if a.is_null(i) || b.is_null(i) {
                    out.push(None);
                    continue;
                }
                if b.value(i) == 0.0 {
                    return exec_err!("intDiv: division by zero");
                }
                let q = (a.value(i) / b.value(i)).trunc();
                if !q.is_finite() || q < i64::MIN as f64 || q >= i64::MAX as f64 {
                    return exec_err!("intDiv: {} / {} does not fit Int64", a.value(i), b.value(i));
                }
                out.push(Some(q as i64));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(out))))
    }
}

/// `divide(a, b)`, which `a / b` is: always a Float64 division, as ClickHouse's (`7 / 2` is
/// 3.5, `1 / 0` is inf).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Divide {
    signature: Signature,
}

impl ScalarUDFImpl for Divide {
    fn name(&self) -> &str {
        "divide"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let (Some(a), Some(b)) = (args.args.first(), args.args.get(1)) else {
            return exec_err!("divide takes two numbers");
        };
        let float = |value: &ColumnarValue| -> DfResult<ArrayRef> {
            let array = value.to_array(rows)?;
            if !array.data_type().is_numeric() && array.data_type() != &DataType::Null {
                return exec_err!("cannot divide {}: `/` takes numbers", array.data_type());
            }
            Ok(cast_with_options(&array, &DataType::Float64, &CastOptions::default())?)
        };
        let quotient = datafusion::arrow::compute::kernels::numeric::div(&float(a)?, &float(b)?)?;
        Ok(ColumnarValue::Array(quotient))
    }
}

/// `toString(x)`: the value as ClickHouse prints it (`2024-01-02 03:04:05` for a DateTime).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToString {
    signature: Signature,
}

impl ScalarUDFImpl for ToString {
    fn name(&self) -> &str {
        "toString"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let (Some(value), Some(field)) = (args.args.first(), args.arg_fields.first()) else {
            return exec_err!("toString takes one value");
        };
        let array = value.to_array(rows)?;
        let column = Column::of_field(field, &array)
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let mut out = StringBuilder::with_capacity(rows, rows * 8);
        let mut text = String::new();
        for row in 0..rows {
            if column.is_null(row) {
                out.append_null();
                continue;
            }
            text.clear();
            column.write_text_or(row, "", &mut text);
            out.append_value(&text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// What a number conversion does with a value that does not convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OnFailure {
    /// `toInt64`: the query fails.
    Error,
    /// `toInt64OrNull`: NULL.
    Null,
    /// `toInt64OrZero`: 0.
    Zero,
}

/// `toInt64(x)` and the other conversions to a number type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToNumber {
    name: String,
    target: DataType,
    on_failure: OnFailure,
    signature: Signature,
}

impl ToNumber {
    fn new(type_name: &str, target: DataType, on_failure: OnFailure) -> Self {
        let suffix = match on_failure {
            OnFailure::Error => "",
            OnFailure::Null => "OrNull",
            OnFailure::Zero => "OrZero",
        };
        ToNumber {
            name: format!("to{type_name}{suffix}"),
            target,
            on_failure,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ToNumber {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.target.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some(value) = args.args.first() else { return exec_err!("{} takes one value", self.name) };
        let array = value.to_array(args.number_rows)?;
        // Strings are trimmed, as ClickHouse reads ' 12'.
        let array: ArrayRef = match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let text = cast_with_options(&array, &DataType::Utf8, &CastOptions::default())?;
                Arc::new(
                    text.as_string::<i32>()
                        .iter()
                        .map(|v| v.map(str::trim))
                        .collect::<datafusion::arrow::array::StringArray>(),
                )
            }
            DataType::Null => new_null_array(&self.target, array.len()),
            _ => array,
        };
        let converted = match self.on_failure {
            OnFailure::Error => {
                cast_with_options(&array, &self.target, &CastOptions { safe: false, ..Default::default() })
                    .map_err(|e| datafusion::error::DataFusionError::Execution(format!("{}: {e}", self.name)))?
            }
            OnFailure::Null | OnFailure::Zero => cast_with_options(&array, &self.target, &CastOptions::default())?,
        };
        if self.on_failure == OnFailure::Zero && converted.null_count() > 0 {
            let zero = ScalarValue::new_zero(&self.target)?.to_array_of_size(converted.len())?;
            let missing = is_null(&converted)?;
            return Ok(ColumnarValue::Array(zip(&missing, &zero, &converted)?));
        }
        Ok(ColumnarValue::Array(converted))
    }
}

/// A function of no arguments whose value is fixed (`version()`, `timezone()`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: &'static str,
    signature: Signature,
}

impl Constant {
    fn new(name: &'static str, value: &'static str) -> Self {
        Constant { name, value, signature: Signature::nullary(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.name, DataType::Utf8, false)))
    }

    fn simplify(&self, _args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(Expr::Literal(ScalarValue::Utf8(Some(self.value.to_string())), None)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(self.value.to_string()))))
    }
}
