// Small line charts on a canvas: no library, so the page works offline and under a strict CSP.
"use strict";

window.lineChart = function lineChart(canvas, series) {
  // series: [{values: [number|null], color: "#hex", label: "…"}], all of the same length
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const top = Math.max(1, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  ctx.strokeStyle = "#d8dde2";
  ctx.fillStyle = "#66707a";
  ctx.font = "10px system-ui, sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad, 4);
  ctx.lineTo(pad, h - pad + 4);
  ctx.lineTo(w - 4, h - pad + 4);
  ctx.stroke();
  ctx.fillText(formatTop(top), 2, 12);
  ctx.fillText("0", 2, h - pad + 4);
  series.forEach((s, k) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { drawing = false; return; }
      const x = pad + ((w - pad - 6) * i) / (n - 1);
      const y = 4 + (h - pad) * (1 - v / top);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    });
    ctx.stroke();
    ctx.fillStyle = s.color;
    ctx.fillText(s.label, pad + 6 + k * 70, h - 6);
  });
};

function formatTop(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
