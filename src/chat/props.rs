//! Property tests of template rendering (issue 14): conversation text is data, never template
//! code; HF's `tojson` writes JSON that reads back as the value; and any template assembled
//! from hostile building blocks ends (rendered or refused) within the limits, never panics.

use proptest::prelude::*;

use super::*;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn render_with(
    template: &str,
    messages: &[ChatMessage],
    limits: Limits,
) -> Result<String, ChatError> {
    render(&ChatInput {
        template,
        messages,
        bos_token: "<s>",
        eos_token: "</s>",
        limits,
    })
}

fn message() -> impl Strategy<Value = ChatMessage> {
    (
        prop::sample::select(vec!["system", "user", "assistant", "tool"]),
        // Any text, template syntax included.
        prop_oneof![".*", "[{}%#~ a-z'\"\\\\-]{0,40}"],
    )
        .prop_map(|(role, content)| ChatMessage {
            role: role.to_string(),
            content,
        })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i32>().prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-zé]{1,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Building blocks of hostile templates: loops, recursion, growth by every operator.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{% for i in range(100000) %}".to_string()),
        Just("{% endfor %}".to_string()),
        Just("{% set ns.s = ns.s ~ ns.s %}".to_string()),
        Just("{% set ns.s = ns.s + ns.s %}".to_string()),
        Just("{% set ns.s = ns.s * 3 %}".to_string()),
        Just("{% set ns.l = ns.l + ns.l %}".to_string()),
        Just("{{ ns.s }}".to_string()),
        Just("{{ ns.l|tojson }}".to_string()),
        Just("{{ f(3) }}".to_string()),
        Just("{% set x %}{{ ns.s }}{{ ns.s }}{% endset %}".to_string()),
        Just("{{ messages[0].content * 1000 }}".to_string()),
        Just("{{ ns.s|replace('x', 'xx') }}".to_string()),
        "[a-z<|>]{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn message_text_is_data_not_template_code(messages in prop::collection::vec(message(), 1..5)) {
        let mut want = String::new();
        for m in &messages {
            want.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
        }
        let continue_final = messages.last().unwrap().role == "assistant";
        if !continue_final {
            want.push_str("<|im_start|>assistant\n");
        }
        match render_with(CHATML, &messages, Limits::default()) {
            Ok(got) if !continue_final => prop_assert_eq!(got, want),
            Ok(got) => prop_assert!(want.starts_with(&got)),
            Err(e) => prop_assert!(continue_final && matches!(e, ChatError::FinalMessage), "{e}"),
        }
    }

    #[test]
    fn tojson_reads_back_as_the_value(v in json_value(), indent in prop::option::of(0usize..4)) {
        let text = v.to_string();
        let got = render_value_tojson(&v, indent);
        let back: serde_json::Value = serde_json::from_str(&got).map_err(|e| TestCaseError::fail(format!("{got}: {e}")))?;
        prop_assert_eq!(normalise(&back), normalise(&v), "{}", text);
    }

    #[test]
    fn hostile_templates_end_within_the_limits(parts in prop::collection::vec(fragment(), 1..12)) {
        let mut t = String::from("{% set ns = namespace(s='x', l=[1]) %}{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}");
        let mut open = 0;
        for p in &parts {
            if p.starts_with("{% for") { open += 1; }
            if p == "{% endfor %}" {
                if open == 0 { continue; }
                open -= 1;
            }
            t.push_str(p);
        }
        for _ in 0..open { t.push_str("{% endfor %}"); }
        let limits = Limits { fuel: 200_000, max_bytes: 1 << 20, max_items: 10_000, recursion: 50 };
        let messages = [ChatMessage { role: "user".into(), content: "xy".into() }];
        let started = std::time::Instant::now();
        match render_with(&t, &messages, limits) {
            Ok(out) => prop_assert!(out.len() <= limits.max_bytes),
            Err(e) => prop_assert!(matches!(e, ChatError::Limit(_) | ChatError::Render(_)), "{t}: {e}"),
        }
        prop_assert!(started.elapsed().as_secs() < 5, "{t}: {:?}", started.elapsed());
    }
}

/// HF's `tojson` of a JSON value, through a template.
fn render_value_tojson(v: &serde_json::Value, indent: Option<usize>) -> String {
    let budget = guard::Budget::new(Limits::default());
    let value = minijinja::Value::from_serialize(v);
    let mut env = minijinja::Environment::new();
    env.add_filter(
        "tojson_py",
        move |v: minijinja::Value,
              indent: Option<minijinja::Value>,
              kw: minijinja::value::Kwargs| { hf::tojson(&v, indent, kw, &budget) },
    );
    let src = match indent {
        Some(n) => format!("{{{{ v|tojson_py(indent={n}) }}}}"),
        None => "{{ v|tojson_py }}".to_string(),
    };
    env.render_str(&src, minijinja::context! { v => value })
        .unwrap()
}

/// Floats that print as integers (`1.0`) read back as floats either way.
fn normalise(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(a) => a.iter().map(normalise).collect(),
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
        }
        other => other.clone(),
    }
}
