// Truchet tiles (Smith 1987): quarter-circle arcs in randomly flipped cells form meandering paths.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y * (3.0 + 10.0 * iParams[0].x) + iMouse.xy;
    vec2 id = floor(uv);
    vec2 f = fract(uv) - 0.5;
    if (kd_hash21(id + floor(iTime)) < 0.5) f.x = -f.x;
    float d = min(abs(length(f - 0.5) - 0.5), abs(length(f + 0.5) - 0.5));
    float w = 0.05 + 0.15 * iParams[0].y;
    float line = smoothstep(w, w * 0.6, d);
    vec3 bg = kd_palette(0.2) * 0.4;
    vec3 fg = kd_palette(0.6 + 0.3 * kd_hash21(id) * iParams[0].z);
    fragColor = vec4(mix(bg, fg, line), 1.0);
}
