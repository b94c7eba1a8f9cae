//! Server-sent events (the WHATWG `text/event-stream` format) as the VEEM sends them: lines of
//! `event:` and `data:` fields, a blank line ending each message, `:` lines as comments
//! (keep-alives).

/// One message: its `event` name (`message` when none was given) and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub event: String,
    pub data: String,
}

/// Takes the stream's bytes as they come, in chunks cut anywhere, and gives whole messages.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    ready: std::collections::VecDeque<Message>,
}

impl Parser {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            self.line(line.trim_end_matches(['\n', '\r']));
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            if !self.data.is_empty() || self.event.is_some() {
                self.ready.push_back(Message {
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
    }

    pub fn next_message(&mut self) -> Option<Message> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_whole_whatever_the_chunks() {
        let stream = b": keep-alive\n\nevent: STATE\ndata: {\"a\":1}\n\nevent: PROBE\r\ndata: x\r\ndata: y\r\n\r\n";
        for cut in 1..stream.len() {
            let mut parser = Parser::default();
            parser.feed(&stream[..cut]);
            parser.feed(&stream[cut..]);
            let mut got = Vec::new();
            while let Some(m) = parser.next_message() {
                got.push(m);
            }
            assert_eq!(
                got,
                [
                    Message {
                        event: "STATE".into(),
                        data: "{\"a\":1}".into()
                    },
                    Message {
                        event: "PROBE".into(),
                        data: "x\ny".into()
                    }
                ],
                "cut at {cut}"
            );
        }
    }
}
