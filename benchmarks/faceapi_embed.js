// face-api's own FaceRecognitionNet, run in Node on TensorFlow.js's CPU backend: the reference
// that networks/face_resnet.py is checked against. Called by benchmarks/faceapi_reference.py.
//
//   node benchmarks/faceapi_embed.js MODEL_DIR FACES.bin N
//
// MODEL_DIR holds face_recognition_model-weights_manifest.json and its .bin (the npm package's
// model/ folder); FACES.bin holds N faces of 150x150x3 RGB bytes, row-major. Prints a JSON list
// of N embeddings (128 floats each). Needs @vladmandic/face-api, @tensorflow/tfjs and
// @tensorflow/tfjs-backend-wasm resolvable from the working directory (NODE_PATH works too).
const fs = require('fs');
const path = require('path');

async function main() {
  const [modelDir, facesPath, countText] = process.argv.slice(2);
  const count = Number(countText);
  if (!modelDir || !facesPath || !Number.isInteger(count) || count < 1) {
    console.error('usage: node faceapi_embed.js MODEL_DIR FACES.bin N');
    process.exit(2);
  }
  const tf = require('@tensorflow/tfjs');
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  await tf.setBackend('cpu'); // plain float32 JavaScript kernels: no native or GPU code involved
  await tf.ready();
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, 'face_recognition_model-weights_manifest.json')));
  const weights = fs.readFileSync(path.join(modelDir, manifest[0].paths[0]));
  const buffer = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
  const tensors = tf.io.decodeWeights(buffer, manifest[0].weights); // value = min + scale * q
  const net = new faceapi.FaceRecognitionNet();
  net.loadFromWeightMap(tensors);
  const bytes = fs.readFileSync(facesPath);
  const size = 150 * 150 * 3;
  if (bytes.length !== count * size) throw new Error(`${facesPath}: ${bytes.length} bytes, expected ${count * size}`);
  const out = [];
  for (let i = 0; i < count; i += 1) {
    const face = tf.tensor3d(new Uint8Array(bytes.subarray(i * size, (i + 1) * size)), [150, 150, 3], 'int32');
    const descriptor = await net.computeFaceDescriptor(face);
    out.push(Array.from(descriptor));
    face.dispose();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
