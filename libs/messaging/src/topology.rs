//! The RabbitMQ topology, declared idempotently by every service at each (re)connection.
//!
//! One durable topic exchange carries every event. Each consumer owns a durable queue (quorum,
//! with a delivery limit, unless `AMQP_QUEUE_TYPE` says classic) bound to the routing keys it
//! handles, with a dead-letter exchange and queue for poison messages. The whole topology is declared by every service, not only by the
//! consumer, so an event published before its consumer first started is queued, not dropped.
//!
//! Which queues exist and what they are bound to is data ([`Topology`]) given by the
//! application (Dockyard's is `dockyard_contracts::topology()`): this crate names no service.

use crate::config::QueueType;
use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

/// A consumer's queue: `{exchange}.{consumer}`, bound to `bindings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub consumer: &'static str,
    pub bindings: Vec<&'static str>,
}

/// Every queue on an exchange, and what each is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub queues: Vec<QueueSpec>,
}

impl Topology {
    /// Adds `consumer`'s queue, bound to `bindings`.
    #[must_use]
    pub fn queue(mut self, consumer: &'static str, bindings: &[&'static str]) -> Self {
        self.queues.push(QueueSpec {
            consumer,
            bindings: bindings.to_vec(),
        });
        self
    }
}

pub fn queue_name(exchange: &str, consumer: &str) -> String {
    format!("{exchange}.{consumer}")
}

pub fn dead_letter_exchange(exchange: &str) -> String {
    format!("{exchange}.dlx")
}

pub fn dead_letter_queue(exchange: &str, consumer: &str) -> String {
    format!("{}.dlq", queue_name(exchange, consumer))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// How the queues are declared: their kind, and (quorum queues) the delivery limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queues {
    pub kind: QueueType,
    pub delivery_limit: u32,
}

impl Queues {
    /// What `config` asks for.
    pub fn of(config: &crate::BrokerConfig) -> Self {
        Self {
            kind: config.amqp_queue_type,
            delivery_limit: config.amqp_delivery_limit,
        }
    }
}

/// Declares the exchange, the dead-letter exchange, and every queue with its dead-letter queue.
///
/// A queue that already exists with other arguments (another `x-delivery-limit`, or another
/// kind, declared by an older release or another configuration) is kept as it is, with a
/// warning: RabbitMQ cannot change a queue's arguments, and refusing to start would turn an
/// upgrade into an outage. Delete the queue (when empty) to apply the new arguments.
pub async fn declare(
    connection: &Connection,
    topology: &Topology,
    exchange: &str,
    queues: Queues,
) -> lapin::Result<()> {
    let mut channel = connection.create_channel().await?;
    let dlx = dead_letter_exchange(exchange);
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    for spec in &topology.queues {
        let queue = queue_name(exchange, spec.consumer);
        let dlq = dead_letter_queue(exchange, spec.consumer);
        let mut kind = FieldTable::default();
        kind.insert("x-queue-type".into(), text(queues.kind.as_str()));
        channel
            .queue_declare(dlq.as_str().into(), durable_queue(), kind.clone())
            .await?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut arguments = kind;
        arguments.insert("x-dead-letter-exchange".into(), text(&dlx));
        arguments.insert("x-dead-letter-routing-key".into(), text(&queue));
        if queues.kind == QueueType::Quorum {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(queues.delivery_limit).unwrap_or(i32::MAX)),
            );
        }
        if let Err(error) = channel
            .queue_declare(queue.as_str().into(), durable_queue(), arguments)
            .await
        {
            // The broker closed the channel (406 PRECONDITION_FAILED): the queue exists with
            // other arguments. Keep it if it exists at all.
            tracing::warn!(queue, %error, "the queue exists with other arguments; keeping them (delete it when empty to apply AMQP_QUEUE_TYPE and AMQP_DELIVERY_LIMIT)");
            channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..durable_queue()
            };
            channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await?;
        }
        for key in &spec.bindings {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    channel.close(200, "topology declared".into()).await
}

/// Deletes every queue and exchange [`declare`] creates for `exchange`. For tests and for
/// tearing down an environment; never called by a running service.
pub async fn delete(channel: &Channel, topology: &Topology, exchange: &str) -> lapin::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    for spec in &topology.queues {
        for queue in [
            queue_name(exchange, spec.consumer),
            dead_letter_queue(exchange, spec.consumer),
        ] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
    }
    for name in [exchange.to_owned(), dead_letter_exchange(exchange)] {
        channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}
