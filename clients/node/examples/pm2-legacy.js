// A service as a PM2 system writes it: messages in through process.on('message'),
// out through pm2.sendDataToProcessId and process.send. On Switchboard only the
// require line differs: the rest runs as it did under PM2.
const pm2 = require('@switchboard/bus/pm2'); // was: require('pm2')

pm2.connect(() => {
  process.on('message', (packet) => {
    if (packet.topic !== 'shout') return;
    const { room, text } = packet.data;
    // To chat (Rust or Node: the bus does not care), on behalf of the user who asked.
    pm2.sendDataToProcessId(
      'chat',
      { type: 'process:msg', topic: 'say', data: { room, text: String(text).toUpperCase() }, user: packet.user },
      (err, res) => {
        process.send({
          type: 'process:msg',
          data: { shouted: text, by: packet.user, seq: res ? res.data.seq : null, error: err ? err.code : null },
        });
      },
    );
  });
});
