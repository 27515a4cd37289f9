//! What a task function takes and returns.

use syn::{FnArg, GenericArgument, Ident, Pat, PatType, PathArguments, ReturnType, Token, Type};

use crate::errors::Errors;

/// A task function's signature, as the expansion needs it.
pub(crate) struct Signature {
    /// What the worker passes as the first parameter, if the function asks for anything.
    pub(crate) supplied: Option<Supplied>,
    /// The typed arguments, stored in the job.
    pub(crate) arguments: Vec<Argument>,
    /// The written return type; `None` for `()`.
    pub(crate) output: Option<Type>,
    /// The `async` of an `async fn`; `None` for a plain function, run on a blocking thread.
    pub(crate) asyncness: Option<Token![async]>,
}

/// A first parameter that is not stored in the job but supplied by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Supplied {
    /// `ctx: pq::TaskContext`.
    TaskContext,
    /// `job_id: pq::JobId`.
    JobId,
}

impl Supplied {
    /// What `ty` asks for, going by the last segment of its path, by value or behind a reference.
    fn of(ty: &Type) -> Option<Supplied> {
        match ty {
            Type::Path(path) if path.qself.is_none() => {
                let last = &path.path.segments.last()?.ident;
                if last == "TaskContext" {
                    Some(Supplied::TaskContext)
                } else if last == "JobId" {
                    Some(Supplied::JobId)
                } else {
                    None
                }
            }
            Type::Reference(reference) => Supplied::of(&reference.elem),
            Type::Paren(paren) => Supplied::of(&paren.elem),
            Type::Group(group) => Supplied::of(&group.elem),
            _ => None,
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Supplied::TaskContext => "TaskContext",
            Supplied::JobId => "JobId",
        }
    }
}

/// What a task's run returns when it succeeds (see [`Signature::output`]).
pub(crate) enum Output<'a> {
    /// Nothing: its job keeps no result.
    Nothing,
    /// This type, spelled in the return type.
    Value(&'a Type),
    /// A type that spells no value type (an alias without parameters, a bare type): refused.
    Returned(&'a Type),
}

/// One stored argument: a field of the task's struct and a key of the job's JSON object.
pub(crate) struct Argument {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
    /// Whether it takes a parent's result (`#[parent]`) or its parents' (`#[parents]`),
    /// rather than a value given to the call.
    pub(crate) from_parent: Option<FromParent>,
}

/// An argument filled with parents' results when its job becomes ready.
pub(crate) struct FromParent {
    /// One parent's result, or a list of several (`#[parents]`, a fan-in).
    pub(crate) many: bool,
    /// The type a parent returns: the argument's, or its list's items', without an `Option`.
    pub(crate) output: Type,
    /// Whether the argument is an `Option` (of the result, or of the list's items, a list of
    /// `Option`s): a parent that failed or kept no result then gives `None`, and the job still
    /// runs; otherwise it refuses to run without every result.
    pub(crate) optional: bool,
}

/// The type inside `Wrapper<T>` when `ty` is one, going by the last segment of its path.
fn inside<'a>(ty: &'a Type, wrapper: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    match &last.arguments {
        PathArguments::AngleBracketed(args) if last.ident == wrapper && args.args.len() == 1 => {
            match args.args.first() {
                Some(GenericArgument::Type(inner)) => Some(inner),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `input` is marked `#[parent]` or `#[parents]`, and what that makes of it.
fn from_parent(input: &PatType, errors: &mut Errors) -> Option<FromParent> {
    let mut found = None;
    for attribute in &input.attrs {
        let many = if attribute.path().is_ident("parent") {
            false
        } else if attribute.path().is_ident("parents") {
            true
        } else {
            continue;
        };
        if let Err(error) = attribute.meta.require_path_only() {
            errors.push(error);
        }
        if found.is_some() {
            errors.spanned(
                attribute,
                "an argument takes one `#[parent]` or `#[parents]`",
            );
            continue;
        }
        let ty = &*input.ty;
        let item = if many {
            match inside(ty, "Vec") {
                Some(item) => item,
                None => {
                    errors.spanned(
                        ty,
                        "a `#[parents]` argument is a `Vec` of what its parents return, in the \
                         order they were given",
                    );
                    continue;
                }
            }
        } else {
            ty
        };
        let (output, optional) = match inside(item, "Option") {
            Some(inner) => (inner.clone(), true),
            None => (item.clone(), false),
        };
        found = Some(FromParent {
            many,
            output,
            optional,
        });
    }
    found
}

/// The attributes of a parameter that the macro reads, which the compiler must not see.
pub(crate) fn is_ours(attribute: &syn::Attribute) -> bool {
    attribute.path().is_ident("parent") || attribute.path().is_ident("parents")
}

impl Signature {
    /// Reads `signature`, recording in `errors` everything a task cannot be.
    pub(crate) fn parse(signature: &syn::Signature, errors: &mut Errors) -> Signature {
        if let Some(constness) = &signature.constness {
            errors.spanned(constness, "a task cannot be a `const fn`; remove `const`");
        }
        if let Some(unsafety) = &signature.unsafety {
            errors.spanned(
                unsafety,
                "a task cannot be an `unsafe fn`: the worker calls it with no way to uphold \
                 its safety contract; use an `unsafe` block inside it instead",
            );
        }
        if let Some(abi) = &signature.abi {
            errors.spanned(abi, "a task cannot have an `extern` ABI; remove it");
        }
        if !signature.generics.params.is_empty() {
            errors.spanned(
                &signature.generics,
                "a task cannot have generic or lifetime parameters: the worker decodes its \
                 stored arguments into one concrete type",
            );
        }
        if let Some(where_clause) = &signature.generics.where_clause {
            errors.spanned(where_clause, "a task cannot have a `where` clause");
        }
        if let Some(variadic) = &signature.variadic {
            errors.spanned(variadic, "a task cannot be variadic");
        }

        let supplied = match signature.inputs.first() {
            Some(FnArg::Typed(first)) => supplied(first, errors),
            _ => None,
        };
        let arguments = signature
            .inputs
            .iter()
            .skip(usize::from(supplied.is_some()))
            .filter_map(|input| argument(input, errors))
            .collect();

        let output = match &signature.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => {
                if let Type::ImplTrait(_) = **ty {
                    errors.spanned(
                        ty,
                        "a task cannot return `impl Trait`; return `()` or `Result<T, E>` where `E: Display`",
                    );
                }
                Some((**ty).clone())
            }
        };

        Signature {
            supplied,
            arguments,
            output,
            asyncness: signature.asyncness,
        }
    }

    /// What a successful run returns, as the return type spells it: nothing for none, `()`,
    /// `Result<(), E>` and `TaskResult`; the `T` of `Result<T, E>` (or of an alias with `T` first,
    /// `anyhow::Result<T>`); for any other type (an alias without parameters, a bare type),
    /// which the macro refuses, the type itself.
    pub(crate) fn output(&self) -> Output<'_> {
        let is_unit = |ty: &Type| matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty());
        let Some(ty) = &self.output else {
            return Output::Nothing;
        };
        if is_unit(ty) {
            return Output::Nothing;
        }
        let Type::Path(path) = ty else {
            return Output::Returned(ty);
        };
        match path.path.segments.last() {
            Some(last) if last.ident == "TaskResult" && last.arguments.is_empty() => {
                Output::Nothing
            }
            Some(syn::PathSegment {
                arguments: syn::PathArguments::AngleBracketed(args),
                ..
            }) => match args.args.first() {
                Some(syn::GenericArgument::Type(value)) if is_unit(value) => Output::Nothing,
                Some(syn::GenericArgument::Type(value)) => Output::Value(value),
                _ => Output::Returned(ty),
            },
            _ => Output::Returned(ty),
        }
    }
}

/// What the worker supplies for a `first` parameter that asks for it.
fn supplied(first: &PatType, errors: &mut Errors) -> Option<Supplied> {
    let supplied = Supplied::of(&first.ty)?;
    if let Type::Reference(_) = *first.ty {
        errors.spanned(
            &first.ty,
            format!("take the `{}` by value, without `&`", supplied.type_name()),
        );
    }
    Some(supplied)
}

/// A stored argument, or `None` after recording why `input` cannot be one.
fn argument(input: &FnArg, errors: &mut Errors) -> Option<Argument> {
    let input = match input {
        FnArg::Typed(input) => input,
        FnArg::Receiver(receiver) => {
            errors.spanned(
                receiver,
                "a task cannot take `self`: it must be a free function, called by the worker \
                 with nothing but its stored arguments",
            );
            return None;
        }
    };
    let storable = if Supplied::of(&input.ty) == Some(Supplied::TaskContext) {
        errors.spanned(
            &input.ty,
            "a `TaskContext` must be the task's first parameter",
        );
        false
    } else if let Some(error) = unstorable(&input.ty) {
        errors.push(error);
        false
    } else {
        true
    };
    let name = match &*input.pat {
        Pat::Ident(pat) if pat.subpat.is_none() => pat.ident.clone(),
        pat => {
            errors.spanned(
                pat,
                "a task's argument must be a plain name, like `count: u32`: arguments are \
                 stored as a JSON object keyed by name",
            );
            return None;
        }
    };
    let from_parent = from_parent(input, errors);
    storable.then(|| Argument {
        name,
        ty: (*input.ty).clone(),
        from_parent,
    })
}

/// Why a value of type `ty` could not be stored in a job, for the types that would otherwise
/// fail with an error far from the user's code.
fn unstorable(ty: &Type) -> Option<syn::Error> {
    match ty {
        Type::Reference(_) => Some(syn::Error::new_spanned(
            ty,
            "a task's argument cannot be a reference: arguments are stored as JSON and the \
             worker decodes them into owned values; use an owned type (`String` for `&str`, \
             `Vec<T>` for `&[T]`)",
        )),
        Type::ImplTrait(_) => Some(syn::Error::new_spanned(
            ty,
            "a task's argument cannot be `impl Trait`: the worker decodes arguments into \
             concrete types; name the type",
        )),
        Type::Path(path) => path
            .path
            .segments
            .iter()
            .filter_map(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(generics) => Some(&generics.args),
                _ => None,
            })
            .flatten()
            .find_map(|argument| match argument {
                GenericArgument::Type(ty) => unstorable(ty),
                _ => None,
            }),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(unstorable),
        Type::Array(array) => unstorable(&array.elem),
        Type::Slice(slice) => unstorable(&slice.elem),
        Type::Paren(paren) => unstorable(&paren.elem),
        Type::Group(group) => unstorable(&group.elem),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::*;

    fn parse(signature: syn::Signature) -> Result<Signature, Vec<String>> {
        let mut errors = Errors::default();
        let parsed = Signature::parse(&signature, &mut errors);
        match errors.finish() {
            Ok(()) => Ok(parsed),
            Err(error) => Err(error.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    fn names(signature: &Signature) -> Vec<String> {
        signature
            .arguments
            .iter()
            .map(|a| a.name.to_string())
            .collect()
    }

    #[test]
    fn a_first_task_context_is_supplied_and_the_rest_are_arguments() {
        let signature = parse(parse_quote! {
            async fn eat(ctx: pq::TaskContext, kind: String, mut count: u32) -> anyhow::Result<()>
        })
        .unwrap();
        assert_eq!(signature.supplied, Some(Supplied::TaskContext));
        assert_eq!(names(&signature), ["kind", "count"]);
        assert!(signature.asyncness.is_some());
        assert!(signature.output.is_some());
    }

    #[test]
    fn a_first_job_id_is_supplied() {
        let signature = parse(parse_quote!(fn tally(id: JobId, n: i64))).unwrap();
        assert_eq!(signature.supplied, Some(Supplied::JobId));
        assert_eq!(names(&signature), ["n"]);
        assert!(signature.asyncness.is_none());
        assert!(signature.output.is_none());
    }

    #[test]
    fn a_later_job_id_is_an_argument_like_any_other() {
        let signature = parse(parse_quote!(fn follow(n: i64, other: pq::JobId))).unwrap();
        assert_eq!(signature.supplied, None);
        assert_eq!(names(&signature), ["n", "other"]);
    }

    #[test]
    fn no_parameters_at_all() {
        let signature = parse(parse_quote!(fn ping())).unwrap();
        assert_eq!(signature.supplied, None);
        assert!(signature.arguments.is_empty());
    }

    #[test]
    fn every_unsupported_part_is_reported() {
        let errors = parse(parse_quote! {
            const unsafe extern "C" fn bad<T>(&self, (a, b): (i32, i32), _: u8, s: &str, v: Option<Vec<&[u8]>>, d: impl Display, c: TaskContext) -> impl Sized
        })
        .err()
        .unwrap();
        let starts: Vec<_> = errors
            .iter()
            .map(|e| e.split([':', ';']).next().unwrap())
            .collect();
        assert_eq!(
            starts,
            [
                "a task cannot be a `const fn`",
                "a task cannot be an `unsafe fn`",
                "a task cannot have an `extern` ABI",
                "a task cannot have generic or lifetime parameters",
                "a task cannot take `self`",
                "a task's argument must be a plain name, like `count",
                "a task's argument must be a plain name, like `count",
                "a task's argument cannot be a reference",
                "a task's argument cannot be a reference",
                "a task's argument cannot be `impl Trait`",
                "a `TaskContext` must be the task's first parameter",
                "a task cannot return `impl Trait`",
            ]
        );
    }

    #[test]
    fn the_task_context_is_taken_by_value() {
        assert_eq!(
            parse(parse_quote!(fn f(ctx: &pq::TaskContext)))
                .err()
                .unwrap(),
            ["take the `TaskContext` by value, without `&`"]
        );
    }
}
