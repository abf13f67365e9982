//! ClickHouse's SQL syntax that DataFusion's parser reads but gives another meaning, put in
//! DataFusion's terms on the parsed statement (never on its text):
//! - parametric aggregates, `quantile(0.9)(x)`: the parameters follow the arguments, as the
//!   `quantile` and `quantiles` functions take them; other functions refuse parameters rather
//!   than drop them silently;
//! - `a / b` is ClickHouse's `divide(a, b)`, which always divides as Float64 (`7 / 2` is 3.5);
//! - a result column is named by its expression as written (`avg(v)`, `quantile(0.9)(v)`), as
//!   ClickHouse names it, where DataFusion would qualify and normalize it
//!   (`avg(events.v)`, `quantile(events.v,Float64(0.9))`): clients read columns by those names.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, Query, SelectItem, SetExpr, Statement, VisitMut, VisitorMut, visit_expressions_mut,
};

use crate::error::NodeError;

/// The functions that take `(parameters)(arguments)`.
const PARAMETRIC: [&str; 2] = ["quantile", "quantiles"];

/// Rewrites a parsed statement's ClickHouse syntax in place.
pub fn rewrite(statement: &mut Statement) -> Result<(), NodeError> {
    // Named first, from the text as written, before the expressions below are rewritten.
    let _ = statement.visit(&mut NameResultColumns);
    let flow = visit_expressions_mut(statement, |expr| {
        match expr {
            Expr::Function(function) => {
                if let Err(e) = move_parameters(function) {
                    return ControlFlow::Break(e);
                }
            }
            Expr::BinaryOp { op: BinaryOperator::Divide, .. } => {
                let Expr::BinaryOp { left, right, .. } =
                    std::mem::replace(expr, Expr::value(datafusion::sql::sqlparser::ast::Value::Null))
                else {
                    return ControlFlow::Continue(());
                };
                *expr = call("divide", vec![*left, *right]);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Gives every unnamed result column other than a plain column the name of its expression.
struct NameResultColumns;

impl VisitorMut for NameResultColumns {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(expr) = item
                    && !matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
                {
                    let alias = Ident::with_quote('"', expr.to_string());
                    *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias };
                }
            }
        }
        ControlFlow::Continue(())
    }
}

fn move_parameters(function: &mut Function) -> Result<(), NodeError> {
    let FunctionArguments::List(parameters) = std::mem::replace(&mut function.parameters, FunctionArguments::None)
    else {
        return Ok(());
    };
    let name = function.name.to_string();
    if !PARAMETRIC.contains(&name.as_str()) {
        return Err(NodeError::bad_request(format!(
            "function `{name}` takes no parameters: `{name}(...)(...)` is for {}",
            PARAMETRIC.join(" and ")
        )));
    }
    match &mut function.args {
        FunctionArguments::List(arguments) => arguments.args.extend(parameters.args),
        _ => {
            return Err(NodeError::bad_request(format!(
                "`{name}` takes its value after its parameters: {name}(0.5)(x)"
            )));
        }
    }
    Ok(())
}

/// A call of `name` with positional arguments.
fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args.into_iter().map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a))).collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}
