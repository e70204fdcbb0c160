//! Encoding the records of one routing that embed the same values, each value encoded once.
//!
//! In Avro binary, a record is the concatenation of its fields' encodings, and a `["null", T]`
//! union holding a value is `0x02` then the value's datum. So when a review request and a lifecycle
//! event embed the same decision, or an outcome record and a lifecycle event the same outcome, the
//! datum written for the first record can be copied into the second. The copied bytes are always
//! ones this codec just encoded from the value itself (`Encoded` can only come from the codec), never
//! bytes received from outside; and they are copied only when the record really holds that value
//! (the same allocation, or an equal value), else the value is encoded again.

use crate::{datum, types::*, Codec, CodecError, Record};

/// The datum of `value` as this codec encoded it, borrowed from the record it was written into.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'a, T> {
    value: &'a T,
    datum: &'a [u8],
}

impl<'a, T: PartialEq> Encoded<'a, T> {
    /// The datum, when `value` is the value it was encoded from.
    fn datum_of(self, value: &T) -> Option<&'a [u8]> {
        (std::ptr::eq(self.value, value) || self.value == value).then_some(self.datum)
    }
}

impl Codec {
    /// Like `encode`; also returns `value`'s datum within `out`, for `encode_lifecycle_event`.
    pub fn encode_shared<'a, T: Record>(
        &self,
        topic: &str,
        value: &'a T,
        out: &'a mut Vec<u8>,
    ) -> Result<Encoded<'a, T>, CodecError> {
        self.write_header::<T>(topic, out)?;
        let start = out.len();
        value.write_datum(out)?;
        Ok(Encoded {
            value,
            datum: &out[start..],
        })
    }

    /// Like `encode` for a review request; also returns the datum of its decision within `out`,
    /// for `encode_lifecycle_event`.
    pub fn encode_review_request<'a>(
        &self,
        topic: &str,
        request: &'a ReviewRequest,
        out: &'a mut Vec<u8>,
    ) -> Result<Encoded<'a, Decision>, CodecError> {
        self.write_header::<ReviewRequest>(topic, out)?;
        let decision_at = out.len();
        let decision_end = datum::write_review_request(request, out);
        Ok(Encoded {
            value: &request.decision,
            datum: &out[decision_at..decision_end],
        })
    }

    /// Like `encode` for a lifecycle event, copying the datums of its decision and outcome from
    /// `decision` and `outcome` when it holds those very values (else they are encoded again).
    /// Byte-identical to `encode`.
    pub fn encode_lifecycle_event(
        &self,
        topic: &str,
        event: &LifecycleEvent,
        decision: Option<Encoded<'_, Decision>>,
        outcome: Option<Encoded<'_, Outcome>>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.write_header::<LifecycleEvent>(topic, out)?;
        let decision_datum = decision
            .zip(event.decision.as_deref())
            .and_then(|(encoded, decision)| encoded.datum_of(decision));
        let outcome_datum = outcome
            .zip(event.outcome.as_ref())
            .and_then(|(encoded, outcome)| encoded.datum_of(outcome));
        datum::write_lifecycle_event_with(event, decision_datum, outcome_datum, out);
        Ok(())
    }
}
