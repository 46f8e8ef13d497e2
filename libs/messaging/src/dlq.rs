//! The dead-letter queue as an operator sees it: the one-off `dlq` commands of a service
//! (factor 12), `list`, `show <id>` and `replay <id> | --all`.
//!
//! Messages are read with `basic.get` and held unacknowledged while the command runs; those
//! it does not replay return to the dead-letter queue, in order, when its channel closes. A
//! replay publishes the event to the consumer's own queue (through the default exchange, so
//! no other consumer sees it again), without the failure count of its earlier life, and acks
//! the dead letter only once the broker confirmed the copy: an interrupted replay leaves a
//! duplicate, which the consumer's inbox ignores, never a loss.

use std::io::Write;

use dockyard_runtime::command::{DlqCommand, Selection};
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    config::BrokerConfig,
    consumer::{DEAD_AT_HEADER, FAILURES_HEADER, REASON_HEADER, header_u32},
    envelope::Envelope,
    topology::{self, Topology},
};

/// One dead letter.
#[derive(Debug)]
pub struct DeadLetter {
    /// The event id (`message_id`, else the envelope's), if the message has one.
    pub id: Option<Uuid>,
    pub kind: Option<String>,
    pub correlation_id: Option<Uuid>,
    /// Ours (`x-dockyard-reason`), else the broker's (`x-death`, e.g. `delivery_limit`).
    pub reason: String,
    pub dead_lettered_at: Option<String>,
    /// Handler failures counted before it was given up on.
    pub failures: u32,
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("no dead letter with id {0}")]
    NotFound(Uuid),
    #[error("the broker did not confirm the replayed copy of {0}")]
    NotConfirmed(String),
}

/// Runs `command` for `consumer`'s dead-letter queue, writing what it finds to `out`.
pub async fn run(
    config: &BrokerConfig,
    topology: &Topology,
    consumer: &str,
    command: DlqCommand,
    out: &mut impl Write,
) -> Result<(), DlqError> {
    let connection =
        Connection::connect(config.amqp_url.expose(), ConnectionProperties::default()).await?;
    topology::declare(
        &connection,
        topology,
        &config.amqp_exchange,
        topology::Queues::of(config),
    )
    .await?;
    let channel = connection.create_channel().await?;
    let queue = topology::dead_letter_queue(&config.amqp_exchange, consumer);
    let result = match command {
        DlqCommand::List => list(&channel, &queue, out).await,
        DlqCommand::Show(id) => show(&channel, &queue, id, out).await,
        DlqCommand::Replay(selection) => {
            let target = topology::queue_name(&config.amqp_exchange, consumer);
            replay(&channel, &queue, &target, selection, out).await
        }
    };
    // Whatever was read and not acked goes back to the dead-letter queue now.
    let _ = channel.close(200, "dlq command done".into()).await;
    let _ = connection.close(200, "dlq command done".into()).await;
    result
}

/// Takes every message of `queue`, unacknowledged.
async fn take_all(channel: &Channel, queue: &str) -> Result<Vec<BasicGetMessage>, DlqError> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        messages.push(message);
    }
    Ok(messages)
}

async fn list(channel: &Channel, queue: &str, out: &mut impl Write) -> Result<(), DlqError> {
    let letters: Vec<DeadLetter> = take_all(channel, queue)
        .await?
        .iter()
        .map(DeadLetter::of)
        .collect();
    writeln!(out, "{} dead letter(s) in {queue}", letters.len())?;
    for letter in &letters {
        writeln!(
            out,
            "{}  {}  correlation {}  at {}  failures {}  reason: {}",
            letter
                .id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            letter.kind.as_deref().unwrap_or("-"),
            letter
                .correlation_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            letter.dead_lettered_at.as_deref().unwrap_or("-"),
            letter.failures,
            letter.reason,
        )?;
    }
    Ok(())
}

async fn show(
    channel: &Channel,
    queue: &str,
    id: Uuid,
    out: &mut impl Write,
) -> Result<(), DlqError> {
    let messages = take_all(channel, queue).await?;
    let letter = messages
        .iter()
        .map(DeadLetter::of)
        .find(|letter| letter.id == Some(id))
        .ok_or(DlqError::NotFound(id))?;
    let body = serde_json::from_slice::<Value>(&letter.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&letter.body).into_owned()));
    let shown = json!({
        "id": letter.id,
        "type": letter.kind,
        "correlation_id": letter.correlation_id,
        "reason": letter.reason,
        "dead_lettered_at": letter.dead_lettered_at,
        "failures": letter.failures,
        "headers": headers_json(&letter.headers),
        "message": body,
    });
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&shown).expect("JSON values serialise")
    )?;
    Ok(())
}

async fn replay(
    channel: &Channel,
    queue: &str,
    target: &str,
    selection: Selection,
    out: &mut impl Write,
) -> Result<(), DlqError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let messages = take_all(channel, queue).await?;
    let mut replayed = 0;
    for message in &messages {
        let letter = DeadLetter::of(message);
        if let Selection::One(id) = selection
            && letter.id != Some(id)
        {
            continue;
        }
        // A fresh life: without the failure count and the reasons of the last one.
        let mut headers = FieldTable::default();
        for (name, value) in letter.headers.inner() {
            if ![FAILURES_HEADER, REASON_HEADER, DEAD_AT_HEADER, "x-death"].contains(&name.as_str())
            {
                headers.insert(name.clone(), value.clone());
            }
        }
        let properties = message.delivery.properties.clone().with_headers(headers);
        let confirmation = channel
            .basic_publish(
                "".into(),
                target.into(),
                BasicPublishOptions::default(),
                &message.delivery.data,
                properties,
            )
            .await?
            .await?;
        let shown = letter
            .id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        if !confirmation.is_ack() {
            return Err(DlqError::NotConfirmed(shown));
        }
        message.delivery.ack(BasicAckOptions::default()).await?;
        writeln!(
            out,
            "replayed {shown} ({}) to {target}",
            letter.kind.as_deref().unwrap_or("-")
        )?;
        replayed += 1;
    }
    if let Selection::One(id) = selection
        && replayed == 0
    {
        return Err(DlqError::NotFound(id));
    }
    writeln!(out, "{replayed} dead letter(s) replayed")?;
    Ok(())
}

impl DeadLetter {
    fn of(message: &BasicGetMessage) -> Self {
        let properties = &message.delivery.properties;
        let headers = properties.headers().clone().unwrap_or_default();
        let envelope = serde_json::from_slice::<Envelope>(&message.delivery.data).ok();
        let id = properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .or(envelope.as_ref().map(|e| e.id));
        let text = |name: &str| match headers.inner().get(&ShortString::from(name)) {
            Some(AMQPValue::LongString(text)) => Some(text.to_string()),
            _ => None,
        };
        let reason = text(REASON_HEADER)
            .or_else(|| broker_reason(&headers))
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            id,
            kind: envelope.as_ref().map(|e| e.kind.clone()),
            correlation_id: envelope.as_ref().map(|e| e.correlation_id),
            dead_lettered_at: text(DEAD_AT_HEADER),
            failures: header_u32(Some(&headers), FAILURES_HEADER),
            reason,
            headers,
            body: message.delivery.data.clone(),
        }
    }
}

/// The broker's `x-death` reason (e.g. `delivery_limit`), for messages it dead-lettered.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(&ShortString::from("x-death"))
    else {
        return None;
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        return None;
    };
    match death.inner().get(&ShortString::from("reason")) {
        Some(AMQPValue::LongString(reason)) => Some(format!("broker: {reason}")),
        _ => None,
    }
}

fn headers_json(headers: &FieldTable) -> Value {
    let map = headers
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), amqp_json(value)))
        .collect();
    Value::Object(map)
}

fn amqp_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::LongString(text) => json!(text.to_string()),
        AMQPValue::ShortString(text) => json!(text.as_str()),
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_json).collect())
        }
        AMQPValue::FieldTable(table) => headers_json(table),
        other => json!(format!("{other:?}")),
    }
}
