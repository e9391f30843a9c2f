// Hexagonal tiling: per-hexagon colours with bevelled edges (hex coordinates after Patel, Red Blob Games).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = kd_rot(iParams[0].w * 1.047) * fragCoord / iResolution.y * (3.0 + 10.0 * iParams[0].x) + iMouse.xy;
    vec2 s = vec2(1.0, 1.7320508);
    vec4 centres = floor(vec4(uv, uv - vec2(0.5, 1.0)) / s.xyxy) + 0.5;
    vec4 h = vec4(uv - centres.xy * s, uv - (centres.zw + 0.5) * s);
    vec4 cell = dot(h.xy, h.xy) < dot(h.zw, h.zw) ? vec4(h.xy, centres.xy) : vec4(h.zw, centres.zw + 0.5);
    vec2 p = abs(cell.xy);
    float edge = 0.5 - max(dot(p, s * 0.5), p.x);
    vec3 col = kd_palette(kd_hash21(cell.zw + iTime) * (0.2 + 0.8 * iParams[0].y));
    col *= smoothstep(0.0, 0.03 + 0.15 * iParams[0].z, edge);
    fragColor = vec4(col, 1.0);
}
