//! The code `#[pq::task]` generates: the task's argument struct with its `Task` impl, the call
//! function that builds a `TaskCall`, the registration, and a trait check per argument.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, ItemFn};

use crate::args::{Backoff, OnCancel, OnConflict, OnFailure, OnMissed, TaskArgs};
use crate::errors::Errors;
use crate::signature::{is_ours, FromParent, Output, Signature, Supplied};

/// The whole macro: `args` are the attribute's arguments, `item` the function it is on.
///
/// On any error the function is emitted unchanged beside the errors, so that the rest of the
/// crate (and an IDE) still sees it.
pub(crate) fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = TaskArgs::parse(args, &mut errors);
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = match syn::parse2::<syn::Item>(item.clone()) {
                Ok(other) => {
                    syn::Error::new_spanned(other, "`#[pq::task]` applies to functions only")
                }
                Err(error) => error,
            };
            errors.push(error);
            return with_errors(errors, item);
        }
    };
    let signature = Signature::parse(&function.sig, &mut errors);
    let parameters: Vec<_> = signature.arguments.iter().map(|a| &a.name).collect();
    match signature.output() {
        // Refused already, by `Signature::parse`.
        Output::Returned(syn::Type::ImplTrait(_)) => {}
        Output::Returned(returned) => errors.spanned(
            returned,
            "a task returns `()`, `Result<(), E>` or `Result<T, E>` (or an alias with `T` first, such as `anyhow::Result<T>`), spelled out, so that whether its job keeps a result, and of which type, shows here",
        ),
        Output::Nothing | Output::Value(_) => {}
    }
    let returns_value = !matches!(signature.output(), Output::Nothing);
    args.check(&parameters, returns_value, &mut errors);
    match errors.finish() {
        Ok(()) => expand(&args, &function, &signature),
        Err(error) => with_compile_error(error, item),
    }
}

fn with_errors(errors: Errors, item: TokenStream) -> TokenStream {
    match errors.finish() {
        Ok(()) => item,
        Err(error) => with_compile_error(error, item),
    }
}

fn with_compile_error(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.into_compile_error();
    // Without the parameters' `#[parent]` and `#[parents]`, which only this macro knows: the
    // compiler would report them too, beside the real error.
    let item = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(mut function) => {
            for input in &mut function.sig.inputs {
                if let syn::FnArg::Typed(input) = input {
                    input.attrs.retain(|attribute| !is_ours(attribute));
                }
            }
            function.to_token_stream()
        }
        Err(_) => item,
    };
    quote!(#error #item)
}

/// The user's attributes, sorted by the generated items they belong on.
#[derive(Default)]
struct Attributes<'a> {
    /// `#[cfg]`: on every item, so that they exist or vanish together.
    cfg: Vec<&'a Attribute>,
    /// Doc comments: on the struct and the call function, the items in the crate's docs.
    docs: Vec<&'a Attribute>,
    /// `#[deprecated]`: on the call function only, which callers use; the generated impls and
    /// registration use the struct, which would warn on itself.
    deprecated: Vec<&'a Attribute>,
    /// `#[allow]` and friends: on both functions, the body and the call.
    lints: Vec<&'a Attribute>,
    /// Everything else (`#[tracing::instrument]`, `#[inline]`...): on `run`, which holds the body.
    body: Vec<&'a Attribute>,
}

impl<'a> Attributes<'a> {
    fn sort(attributes: &'a [Attribute]) -> Self {
        let mut sorted = Attributes::default();
        for attribute in attributes {
            let path = attribute.path();
            let list = if path.is_ident("cfg") {
                &mut sorted.cfg
            } else if path.is_ident("doc") {
                &mut sorted.docs
            } else if path.is_ident("deprecated") {
                &mut sorted.deprecated
            } else if ["allow", "expect", "warn", "deny", "forbid"]
                .iter()
                .any(|lint| path.is_ident(lint))
            {
                &mut sorted.lints
            } else {
                &mut sorted.body
            };
            list.push(attribute);
        }
        sorted
    }
}

fn expand(args: &TaskArgs, function: &ItemFn, signature: &Signature) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let Attributes {
        cfg,
        docs,
        deprecated,
        lints,
        body,
    } = Attributes::sort(attrs);
    let task = &sig.ident;
    let types: Vec<_> = signature.arguments.iter().map(|a| &a.ty).collect();
    // Spanned on the parameter, where serde's derives report a type that is not (de)serializable.
    // An argument from parents' results is absent until its job is released, so its field
    // is an `Option` (the argument's own, for an optional result).
    let fields = signature.arguments.iter().map(|argument| {
        let (name, ty) = (&argument.name, &argument.ty);
        let doc = format!("The task's `{}` argument.", name.unraw());
        match &argument.from_parent {
            None => quote_spanned!(name.span()=> #[doc = #doc] pub #name: #ty),
            Some(from) => {
                let field = if awaits_result(from) {
                    quote!(::core::option::Option<#ty>)
                } else {
                    quote!(#ty)
                };
                quote_spanned! {name.span()=>
                    #[doc = #doc]
                    #[serde(default, skip_serializing_if = "::core::option::Option::is_none")]
                    pub #name: #field
                }
            }
        }
    });

    let mut run = syn::Signature {
        ident: format_ident!("run", span = sig.ident.span()),
        ..sig.clone()
    };
    for input in &mut run.inputs {
        if let syn::FnArg::Typed(input) = input {
            input.attrs.retain(|attribute| !is_ours(attribute));
        }
    }
    // The call function takes what gives each result in place of the result itself: a node of
    // a workflow or a job's handle, whose type says what it returns.
    let call_params = signature.arguments.iter().map(|argument| {
        let (name, ty) = (&argument.name, &argument.ty);
        match &argument.from_parent {
            None => quote!(#name: #ty),
            Some(FromParent {
                many: false,
                output,
                ..
            }) => {
                quote_spanned!(ty.span()=> #name: impl ::pq::ResultOf<#output>)
            }
            Some(FromParent {
                many: true, output, ..
            }) => quote_spanned! {ty.span()=>
                #name: impl ::core::iter::IntoIterator<Item = impl ::pq::ResultOf<#output>>
            },
        }
    });
    // A list starts empty, so that a fan-in of no parents runs with none; a single result
    // starts absent, and arrives when the job is released.
    let call_fields = signature.arguments.iter().map(|argument| {
        let name = &argument.name;
        match &argument.from_parent {
            None => quote!(#name),
            Some(FromParent { many: true, .. }) => {
                quote!(#name: ::core::option::Option::Some(::std::vec::Vec::new()))
            }
            Some(FromParent { many: false, .. }) => quote!(#name: ::core::option::Option::None),
        }
    });
    let call_inputs = signature.arguments.iter().filter_map(|argument| {
        let name = &argument.name;
        let key = name.unraw().to_string();
        match &argument.from_parent {
            None => None,
            Some(FromParent { many: false, .. }) => Some(quote!(.__from_parent(#key, #name))),
            Some(FromParent { many: true, .. }) => Some(quote!(.__from_parents(#key, #name))),
        }
    });
    let name = match &args.name {
        Some(name) => name.to_token_stream(),
        None => {
            let function = sig.ident.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #function))
        }
    };
    let options = options(args);
    // A task that returns a value answers a handle to wait for it, which its job keeps. Its
    // type as the return type spells it: one the task cannot have is then reported once,
    // where `execute` converts it. (`task` refused a return type that spells no value type.)
    let (output, enqueued) = match (signature.output(), &args.unique) {
        (Output::Value(value), _) => (value.to_token_stream(), quote!(::pq::JobHandle<#value>)),
        (Output::Nothing | Output::Returned(_), Some(_)) => (quote!(()), quote!(::pq::Enqueued)),
        (Output::Nothing | Output::Returned(_), None) => (quote!(()), quote!(::pq::JobId)),
    };
    let execute = execute(task, signature, &output);
    // A unique task's enqueue tells a new job from a waiting one; its key is the JSON of the
    // parameters `unique` names, in that order.
    let unique = args.unique.as_ref().map(|names| {
        quote! {
            fn unique_key(&self) -> ::core::option::Option<::std::string::String> {
                ::pq::__private::unique_key(&(#(&self.#names,)*))
            }
        }
    });
    // A per-key policy's key: the JSON of the parameters `limit_key` or `sequence` names.
    let flow_key = args
        .limit_key
        .as_ref()
        .or(args.sequence.as_ref())
        .map(|names| {
            quote! {
                fn flow_key(&self) -> ::core::option::Option<::std::string::String> {
                    ::pq::__private::unique_key(&(#(&self.#names,)*))
                }
            }
        });
    let unique_task = args.unique.as_ref().map(|_| {
        quote! {
            #(#cfg)*
            impl ::pq::__private::UniqueTask for #task {}
        }
    });
    let location = quote_spanned! {sig.ident.span()=>
        ::core::concat!(::core::file!(), ":", ::core::line!())
    };
    let argument_checks = types.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            #(#cfg)*
            const _: () = ::pq::__private::assert_argument::<#ty>();
        }
    });

    quote! {
        #(#docs)*
        #(#cfg)*
        #[allow(non_camel_case_types)]
        #[derive(::pq::__private::serde::Serialize, ::pq::__private::serde::Deserialize)]
        #[serde(crate = "::pq::__private::serde")]
        #vis struct #task {
            #(#fields,)*
        }

        #(#cfg)*
        impl #task {
            /// The task's body, to call directly (in unit tests, say) without a database.
            #(#lints)*
            #(#body)*
            #vis #run #block
        }

        #(#cfg)*
        impl ::pq::__private::Task for #task {
            const NAME: &'static str = #name;
            const OPTIONS: ::pq::__private::TaskOptions = #options;
            type Enqueued = #enqueued;
            type Output = #output;
            #execute
            #unique
            #flow_key
        }

        #(#docs)*
        #(#cfg)*
        #(#deprecated)*
        #(#lints)*
        #vis fn #task(#(#call_params),*) -> ::pq::TaskCall<#task> {
            ::pq::TaskCall::new(#task { #(#call_fields),* }) #(#call_inputs)*
        }

        #unique_task

        #(#cfg)*
        ::pq::__private::inventory::submit! {
            ::pq::__private::TaskDefinition::of::<#task>(#location)
        }

        #(#argument_checks)*
    }
}

/// The `TaskOptions` constant: what the attribute sets, and the runtime's defaults for the rest.
fn options(args: &TaskArgs) -> TokenStream {
    let default = |field: &str| {
        let field = syn::Ident::new(field, Span::call_site());
        quote!(::pq::__private::TaskOptions::DEFAULT.#field)
    };
    let some_duration = |d: Duration| {
        let d = duration(d);
        quote!(::core::option::Option::Some(#d))
    };
    let queue = match &args.queue {
        Some(queue) => queue.to_token_stream(),
        None => default("queue"),
    };
    let schedule_at = args
        .schedule_at
        .map_or_else(|| default("schedule_at"), some_duration);
    let expected_at = args
        .expected_at
        .map_or_else(|| default("expected_at"), some_duration);
    let max_retries = args
        .max_retries
        .map_or_else(|| default("max_retries"), |n| quote!(#n));
    let retry_in = args.retry_in.map_or_else(|| default("retry_in"), duration);
    let timeout = args
        .timeout
        .map_or_else(|| default("timeout"), some_duration);
    let backoff = match args.backoff {
        Some(Backoff::Fixed) => quote!(::pq::__private::Backoff::Fixed),
        Some(Backoff::Exponential) => quote!(::pq::__private::Backoff::Exponential),
        None => default("backoff"),
    };
    let on_cancel = match args.on_cancel {
        Some(OnCancel::Cooperate) => quote!(::pq::__private::OnCancel::Cooperate),
        Some(OnCancel::Abort) => quote!(::pq::__private::OnCancel::Abort),
        None => default("on_cancel"),
    };
    let unique = match (&args.unique, args.debounce, args.on_conflict) {
        (None, _, _) => default("unique"),
        (Some(_), Some(delay), _) => {
            let delay = duration(delay);
            let max = args.debounce_max.map_or_else(
                || quote!(::core::option::Option::None),
                |max| {
                    let max = duration(max);
                    quote!(::core::option::Option::Some(#max))
                },
            );
            quote!(::core::option::Option::Some(::pq::OnConflict::Debounce {
                delay: #delay,
                max: #max,
            }))
        }
        (Some(_), None, Some(OnConflict::Replace)) => {
            quote!(::core::option::Option::Some(::pq::OnConflict::Replace))
        }
        (Some(_), None, _) => quote!(::core::option::Option::Some(::pq::OnConflict::Skip)),
    };
    let cron = match &args.cron {
        None => default("cron"),
        Some(expression) => {
            let timezone = args
                .timezone
                .as_ref()
                .map_or_else(|| quote!("UTC"), ToTokens::to_token_stream);
            let on_missed = match args.on_missed {
                None | Some(OnMissed::Coalesce) => quote!(::pq::OnMissed::Coalesce),
                Some(OnMissed::CatchUp) => quote!(::pq::OnMissed::CatchUp),
                Some(OnMissed::Skip) => quote!(::pq::OnMissed::Skip),
            };
            quote!(::core::option::Option::Some(::pq::Cron {
                expression: #expression,
                timezone: #timezone,
                on_missed: #on_missed,
            }))
        }
    };
    let flowing = args.limit.is_some() || args.sequence.is_some() || args.rate.is_some();
    let flow = if flowing {
        let option = |value: Option<TokenStream>| match value {
            Some(value) => quote!(::core::option::Option::Some(#value)),
            None => quote!(::core::option::Option::None),
        };
        let max_running = option(args.limit.map(|n| quote!(#n)));
        let keyed = args.limit_key.is_some();
        let sequence = option(args.sequence.as_ref().map(|_| match args.on_failure {
            Some(OnFailure::Skip) => quote!(::pq::Sequence::Skip),
            _ => quote!(::pq::Sequence::Block),
        }));
        let rate = option(args.rate.map(|(jobs, per)| {
            let per = duration(per);
            quote!((#jobs, #per))
        }));
        let burst = option(args.burst.map(|n| quote!(#n)));
        quote!(::core::option::Option::Some(::pq::FlowPolicy {
            max_running: #max_running,
            keyed: #keyed,
            sequence: #sequence,
            rate: #rate,
            burst: #burst,
        }))
    } else {
        default("flow")
    };
    let keep_result = args
        .keep_result
        .map_or_else(|| default("keep_result"), duration);
    quote! {
        ::pq::__private::TaskOptions {
            queue: #queue,
            schedule_at: #schedule_at,
            expected_at: #expected_at,
            max_retries: #max_retries,
            retry_in: #retry_in,
            backoff: #backoff,
            timeout: #timeout,
            on_cancel: #on_cancel,
            unique: #unique,
            keep_result: #keep_result,
            cron: #cron,
            flow: #flow,
        }
    }
}

/// Whether an argument from parents needs its results to run: all but an optional single
/// result, whose field is the argument's own `Option`.
fn awaits_result(from: &FromParent) -> bool {
    from.many || !from.optional
}

fn duration(duration: Duration) -> TokenStream {
    let (secs, nanos) = (duration.as_secs(), duration.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}

/// `Task::execute`: unpacks the stored arguments and runs the body, on a blocking thread for a
/// plain function.
fn execute(task: &syn::Ident, signature: &Signature, output: &TokenStream) -> TokenStream {
    // Hygienic, so that an argument named `ctx` does not shadow it.
    let ctx = syn::Ident::new("ctx", Span::mixed_site());
    let names: Vec<_> = signature.arguments.iter().map(|a| &a.name).collect();
    let (ctx_param, ctx_arg) = match signature.supplied {
        None => (quote!(_), None),
        Some(Supplied::TaskContext) => (quote!(#ctx), Some(quote!(#ctx,))),
        Some(Supplied::JobId) => (quote!(#ctx), Some(quote!(#ctx.job_id(),))),
    };
    let call = quote!(#task::run(#ctx_arg #(#names),*));
    // A result a parent did not give refuses the run for good: the job was released without
    // it (enqueued without its workflow, or a parent that kept no result).
    let unwraps = signature.arguments.iter().filter_map(|argument| {
        let from = argument.from_parent.as_ref().filter(|from| awaits_result(from))?;
        let name = &argument.name;
        let message = format!(
            "argument `{}` takes {}, which this job does not have: it was enqueued outside its workflow, or a parent kept no result",
            name.unraw(),
            if from.many { "its parents' results" } else { "its parent's result" },
        );
        Some(quote! {
            let ::core::option::Option::Some(#name) = #name else {
                return ::core::result::Result::Err(::pq::__private::TaskError::permanent(#message));
            };
        })
    });
    let unwraps = quote!(#(#unwraps)*);
    // The conversion is spanned on the return type, so that one it cannot have is reported
    // there: `<R as IntoTaskResult>` carries its tokens, and the `let` the value's type.
    let span = signature
        .output
        .as_ref()
        .map_or_else(Span::call_site, |output| output.span());
    let into_task_result = match &signature.output {
        Some(returned) => quote_spanned! {span=>
            <#returned as ::pq::__private::IntoTaskResult>::into_task_result
        },
        None => quote!(::pq::__private::IntoTaskResult::into_task_result),
    };
    let converted = |value: TokenStream| {
        quote_spanned! {span=>
            let result: ::core::result::Result<#output, ::pq::__private::TaskError> = #value;
            result
        }
    };
    let run = if let Some(asyncness) = &signature.asyncness {
        let converted = converted(quote_spanned!(span=> #into_task_result(#call.await)));
        // Spanned on the function's `async`, where a body that is not `Send` is reported.
        quote_spanned! {asyncness.span=>
            ::std::boxed::Box::pin(async move { #unwraps #converted })
        }
    } else {
        let converted = converted(quote_spanned! {span=>
            ::pq::__private::run_blocking(move || #into_task_result(#call)).await
        });
        quote!(::std::boxed::Box::pin(async move { #unwraps #converted }))
    };
    quote! {
        fn execute(
            self,
            #ctx_param: ::pq::TaskContext,
        ) -> ::pq::__private::BoxFuture<
            'static,
            ::core::result::Result<#output, ::pq::__private::TaskError>,
        > {
            let #task { #(#names),* } = self;
            #run
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn items(tokens: TokenStream) -> Vec<syn::Item> {
        syn::parse2::<syn::File>(tokens).unwrap().items
    }

    #[test]
    fn a_task_becomes_a_struct_its_impls_the_call_function_and_its_registration() {
        let items = items(task(
            quote!(queue = "apples"),
            quote! {
                /// Eats.
                pub async fn eat(ctx: pq::TaskContext, kind: String) -> anyhow::Result<()> { Ok(()) }
            },
        ));
        let kinds: Vec<_> = items
            .iter()
            .map(|item| match item {
                syn::Item::Struct(_) => "struct",
                syn::Item::Impl(_) => "impl",
                syn::Item::Fn(_) => "fn",
                syn::Item::Macro(_) => "macro",
                syn::Item::Const(_) => "const",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["struct", "impl", "impl", "fn", "macro", "const"]);
    }

    #[test]
    fn on_error_the_function_is_emitted_unchanged_beside_every_error() {
        let function = quote!(
            fn eat(kind: &str) {}
        );
        let items = items(task(quote!(queue = 1, retries = 2), function.clone()));
        let errors = items
            .iter()
            .filter(|item| matches!(item, syn::Item::Macro(m) if m.mac.path.segments.last().unwrap().ident == "compile_error"))
            .count();
        assert_eq!(errors, 3);
        let last = items.last().unwrap();
        assert_eq!(quote!(#last).to_string(), function.to_string());
    }

    #[test]
    fn anything_but_a_function_is_rejected() {
        let output = task(
            TokenStream::new(),
            quote!(
                struct Eat;
            ),
        )
        .to_string();
        assert!(
            output.contains("`#[pq::task]` applies to functions only"),
            "{output}"
        );
        assert!(output.ends_with("struct Eat ;"), "{output}");
    }

    #[test]
    fn each_attribute_goes_where_it_applies() {
        let items = items(task(
            TokenStream::new(),
            quote! {
                /// Eats.
                #[cfg(feature = "apples")]
                #[deprecated]
                #[allow(clippy::too_many_arguments)]
                #[tracing::instrument]
                fn eat(kind: String) {}
            },
        ));
        let attributes = |attrs: &[Attribute]| -> Vec<String> {
            attrs
                .iter()
                .map(|a| a.path().to_token_stream().to_string().replace(' ', ""))
                .collect()
        };
        let (mut on_struct, mut on_run, mut on_call) = (None, None, None);
        for item in &items {
            match item {
                syn::Item::Struct(s) => on_struct = Some(attributes(&s.attrs)),
                syn::Item::Fn(f) => on_call = Some(attributes(&f.attrs)),
                syn::Item::Impl(i) if i.trait_.is_none() => match &i.items[0] {
                    syn::ImplItem::Fn(run) => on_run = Some(attributes(&run.attrs)),
                    _ => unreachable!(),
                },
                syn::Item::Impl(i) => assert_eq!(attributes(&i.attrs), ["cfg"]),
                syn::Item::Macro(m) => assert_eq!(attributes(&m.attrs), ["cfg"]),
                syn::Item::Const(c) => assert_eq!(attributes(&c.attrs), ["cfg"]),
                _ => {}
            }
        }
        assert_eq!(
            on_struct.unwrap(),
            ["doc", "cfg", "allow", "derive", "serde"]
        );
        assert_eq!(on_run.unwrap(), ["doc", "allow", "tracing::instrument"]);
        assert_eq!(on_call.unwrap(), ["doc", "cfg", "deprecated", "allow"]);
    }
}
